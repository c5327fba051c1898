"""Cross-field checks that no single field's validator can make: names that must exist, sizes that must fit.

Each check reports problems through a callback; none reported means the manifest is sound.
"""

from __future__ import annotations

import difflib
import glob
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mixer.manifest.merge import deep_merge
from mixer.manifest.model import ModelConfig
from mixer.manifest.names import identifier_problem
from mixer.manifest.schema import Manifest
from mixer.manifest.yaml_lines import Path_

Report = Callable[[Path_, str], None]


def is_url(path: str) -> bool:
    return "://" in path


def _did_you_mean(name: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else f"; declared: {', '.join(known)}"


def non_finite(data: Any, path: Path_ = ()) -> Iterator[tuple[Path_, float]]:
    """Every NaN or infinity in the raw YAML data (`.nan`, `.inf`): no field of a manifest means one."""
    if isinstance(data, float) and not math.isfinite(data):
        yield path, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from non_finite(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from non_finite(v, path + (i,))


def output_problem(output: str) -> str | None:
    """Why `output` cannot be the build folder (the filesystem root, an existing file), or None."""
    if is_url(output):
        return None
    path = Path(output).expanduser()
    if path.resolve() == Path(path.resolve().anchor):
        return f"{output!r} is the filesystem root: name a folder of its own (the build writes sources/, stages/ …)"
    if path.exists() and not path.is_dir():
        return f"{output} is an existing file, not a folder"
    return None


def check_names(m: Manifest, report: Report) -> None:
    """Source and ablation names become folders under the output: they must be identifiers; the output folder too.

    Stage names are checked by their field validator.
    """
    for section, names in (("sources", m.sources), ("ablations", m.ablations)):
        for name in names:
            problem = identifier_problem(name, section.removesuffix("s"))
            if problem:
                report((section, name), problem)
    problem = output_problem(m.output)
    if problem:
        report(("output",), problem)


def check_stages(m: Manifest, report: Report) -> None:
    seen: dict[str, int] = {}
    known = list(m.sources)
    for i, st in enumerate(m.stages):
        if st.name in seen:
            report(("stages", i, "name"), f"duplicate stage name {st.name!r} (also stages[{seen[st.name]}])")
        seen.setdefault(st.name, i)
        for src in st.mixture:
            if src not in m.sources:
                report(
                    ("stages", i, "mixture", src),
                    f"source {src!r} is not declared in sources{_did_you_mean(src, known)}",
                )
        try:
            n_img = m.model.image_tokens_for(st.image_size)
        except ValueError as e:
            report(("stages", i, "image_size"), str(e))
        else:
            if st.seq_len <= n_img:
                report(
                    ("stages", i, "seq_len"),
                    f"{st.seq_len} does not fit one image's {n_img} tokens (image_size {st.image_size}) plus text",
                )
        steps = st.steps()
        if steps is not None and st.optimizer.warmup_steps is not None and st.optimizer.warmup_steps > steps:
            report(
                ("stages", i, "optimizer", "warmup_steps"),
                f"warm-up of {st.optimizer.warmup_steps} steps is longer than the stage ({steps} steps)",
            )
        if st.lora is not None and "lora" not in st.trains:
            report(("stages", i, "lora"), "LoRA settings given but trains does not include lora")


def check_ablations(m: Manifest, report: Report) -> None:
    stages = [s.name for s in m.stages]
    for name, ab in m.ablations.items():
        if ab.stage not in stages:
            report(("ablations", name, "stage"), f"no stage named {ab.stage!r}{_did_you_mean(ab.stage, stages)}")
            continue
        mixture = m.stage(ab.stage).mixture
        if ab.grid is not None and ab.grid.vary not in mixture:
            report(
                ("ablations", name, "grid", "vary"),
                f"source {ab.grid.vary!r} is not in the stage's mixture{_did_you_mean(ab.grid.vary, list(mixture))}",
            )
        if ab.grid is not None and len(mixture) < 2:
            report(("ablations", name, "grid"), "a share sweep needs a mixture of at least two sources")
        if ab.proxy.model is not None:
            merged = deep_merge(m.model.model_dump(exclude_none=True), ab.proxy.model)
            try:
                ModelConfig.model_validate(merged)
            except ValidationError as e:
                for err in e.errors():
                    report(("ablations", name, "proxy", "model", *err["loc"]), err["msg"].removeprefix("Value error, "))


def check_files(m: Manifest, report: Report) -> None:
    """Inputs that must exist on this machine (fsspec URLs are checked when the build opens them)."""
    for name, src in m.sources.items():
        for j, pattern in enumerate(src.paths):
            if not is_url(pattern) and not glob.glob(pattern):
                report(("sources", name, "paths", j), f"no file matches {pattern}")
        if src.image_root and not is_url(src.image_root) and not os.path.isdir(src.image_root):
            report(("sources", name, "image_root"), f"folder not found: {src.image_root}")
        cap = src.options.captions_path
        if cap and not is_url(cap) and not os.path.exists(cap):
            report(("sources", name, "options", "captions_path"), f"file not found: {cap}")


def check_deepspeed(m: Manifest, report: Report) -> None:
    path = m.deepspeed.config
    if path is None:
        return
    if not os.path.isfile(path):
        report(("deepspeed", "config"), f"DeepSpeed JSON not found: {path}")
        return
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        report(("deepspeed", "config"), f"not a readable JSON file: {path}: {e}")


def check_model_paths(m: Manifest, report: Report, local: Callable[[str], bool]) -> None:
    parts = {
        ("model", "vision", "name_or_path"): m.model.vision.name_or_path,
        ("model", "llm", "name_or_path"): m.model.llm.name_or_path,
        ("model", "tokenizer"): m.model.tokenizer,
    }
    for path, value in parts.items():
        if value and local(value) and not os.path.exists(value):
            report(path, f"local model folder not found: {value}")
