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

from mixer.manifest import hf
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
                proxy = ModelConfig.model_validate(merged)
            except ValidationError as e:
                for err in e.errors():
                    report(("ablations", name, "proxy", "model", *err["loc"]), err["msg"].removeprefix("Value error, "))
            else:
                hf.check_inline_configs(proxy, report, ("ablations", name, "proxy", "model"))


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
            config = json.load(f)
    except (OSError, ValueError) as e:
        report(("deepspeed", "config"), f"not a readable JSON file: {path}: {e}")
        return
    if not isinstance(config, dict):
        report(("deepspeed", "config"), f"{path}: expected a JSON object, got {type(config).__name__}")
        return
    for message in deepspeed_batch_problems(config, m):
        report(("deepspeed", "config"), f"{path}: {message}")


def deepspeed_batch_problems(config: dict[str, Any], m: Manifest) -> list[str]:
    """Batch sizes in a user's DeepSpeed JSON that contradict a stage (the JSON wins, the plan would not match).

    train_batch_size must be the stage's global_batch, train_micro_batch_size_per_gpu its micro_batch, and
    gradient_accumulation_steps must leave a whole world size: global_batch / (micro_batch × steps). "auto" defers.
    """
    out = []
    wanted = {
        "train_batch_size": lambda st: st.global_batch,
        "train_micro_batch_size_per_gpu": lambda st: st.micro_batch,
    }
    for key, of_stage in wanted.items():
        value = config.get(key)
        if value is None or value == "auto":
            continue
        bad = [f"{st.name} ({of_stage(st)})" for st in m.stages if value != of_stage(st)]
        if bad:
            field = "global_batch" if key == "train_batch_size" else "micro_batch"
            out.append(f'{key} {value!r} disagrees with {field} of stages {", ".join(bad)}; remove it or set "auto"')
    steps = config.get("gradient_accumulation_steps")
    if steps is not None and steps != "auto":
        ok = isinstance(steps, int) and steps > 0
        bad = [st.name for st in m.stages if not ok or (st.global_batch or 1) % (st.micro_batch * steps)]
        if bad:
            out.append(
                f"gradient_accumulation_steps {steps!r} does not divide global_batch / micro_batch of stages "
                f'{", ".join(bad)}; remove it or set "auto" (it follows from the world size)'
            )
    return out


def check_tokenizer(m: Manifest, report: Report, local: Callable[[str], bool]) -> None:
    """A tokenizer named by hub name must already be on this machine (a local folder is checked with the paths)."""
    name = m.model.tokenizer_path()
    if name and not local(name):
        problem = hf.hub_name_problem(name)
        if problem:
            report(("model", "tokenizer") if m.model.tokenizer else ("model", "llm", "name_or_path"), problem)


def check_model_paths(m: Manifest, report: Report, local: Callable[[str], bool]) -> None:
    parts = {
        ("model", "vision", "name_or_path"): m.model.vision.name_or_path,
        ("model", "llm", "name_or_path"): m.model.llm.name_or_path,
        ("model", "tokenizer"): m.model.tokenizer,
    }
    for path, value in parts.items():
        if value and local(value) and not os.path.exists(value):
            report(path, f"local model folder not found: {value}")
