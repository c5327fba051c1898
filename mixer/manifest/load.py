"""Read a manifest file: safe YAML → pydantic → resolved paths → cross-field checks.

Any failure is one `ManifestError` listing every problem as `file:line: field.path: message`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from mixer.manifest import checks, hf
from mixer.manifest.errors import ManifestError, problem, pydantic_problems
from mixer.manifest.merge import deep_merge
from mixer.manifest.schema import Manifest
from mixer.manifest.yaml_lines import Path_, YamlProblem, load_yaml


def load_manifest(
    path: str | os.PathLike,
    check_paths: bool = True,
    data_root: str | None = None,
    check_tokenizer: bool | None = None,
) -> Manifest:
    """Load and validate `path`. Relative paths resolve against the manifest's folder (sources against data_root).

    check_paths: also require every input file, image root and local model folder to exist on this machine.
    data_root: overrides the manifest's data_root (relative to the current directory).
    check_tokenizer: require the tokenizer to be a local folder or in the 🤗 cache (default: as check_paths).
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ManifestError([f"{file}: cannot read the manifest: {e.strerror or e}"]) from None
    try:
        data, lines, dups = load_yaml(text, file)
    except YamlProblem as e:
        raise ManifestError([str(e)]) from None
    if dups:
        raise ManifestError(dups)
    data = _extend(data, Path(path), file, [], lines.get(("extends",)))
    infinite = [problem(file, lines, p, f"must be a finite number (got {v})") for p, v in checks.non_finite(data)]
    if infinite:
        raise ManifestError(infinite)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        raise ManifestError(pydantic_problems(e, Manifest, file, lines)) from None

    base = Path(path).resolve().parent
    _resolve(manifest, base, Path(data_root).resolve() if data_root else None)
    problems: list[str] = []

    def report(where: Path_, message: str) -> None:
        problems.append(problem(file, lines, where, message))

    checks.check_names(manifest, report)
    checks.check_stages(manifest, report)
    checks.check_ablations(manifest, report)
    checks.check_deepspeed(manifest, report)
    hf.check_inline_configs(manifest.model, report)
    if check_paths if check_tokenizer is None else check_tokenizer:
        checks.check_tokenizer(manifest, report, _looks_local)
    if check_paths:
        checks.check_files(manifest, report)
        checks.check_model_paths(manifest, report, _looks_local)
    if problems:
        raise ManifestError(problems)
    return manifest


def _extend(data: dict, path: Path, file: str, chain: list[Path], line: int | None = None) -> dict:
    """Merge the manifest named by `extends:` (relative to this one) under `data`, recursively.

    `line` is the line of `extends:` in `file` (the loader's lines are taken before this pops the key).
    """
    parent = data.pop("extends", None)
    if parent is None:
        return data
    where = f"{file}:{line}" if line else file
    if not isinstance(parent, str) or not parent:
        raise ManifestError([f"{where}: extends: expected the path of a manifest (got {parent!r})"])
    target = (path.parent / parent).resolve()
    seen = [*chain, path.resolve()]
    if target in seen:
        loop = " → ".join(p.name for p in [*seen[seen.index(target) :], target])
        raise ManifestError([f"{where}: extends: cycle {loop}"])
    try:
        base, lines, dups = load_yaml(target.read_text(encoding="utf-8"), str(target))
    except OSError as e:
        raise ManifestError([f"{where}: extends: cannot read {target}: {e.strerror or e}"]) from None
    except YamlProblem as e:
        raise ManifestError([str(e)]) from None
    if dups:
        raise ManifestError(dups)
    return deep_merge(_extend(base, target, str(target), seen, lines.get(("extends",))), data)


def _join(root: Path, p: str) -> str:
    if checks.is_url(p):
        return p
    return os.path.normpath(root / os.path.expanduser(p))


def _looks_local(value: str) -> bool:
    return value.startswith(("/", ".", "~"))


def _resolve(m: Manifest, base: Path, data_root: Path | None) -> None:
    m.output = _join(base, m.output)
    root = data_root or Path(_join(base, m.data_root))
    m.data_root = str(root)
    for src in m.sources.values():
        src.paths = [_join(root, p) for p in src.paths]
        if src.image_root:
            src.image_root = _join(root, src.image_root)
        if src.options.captions_path:
            src.options.captions_path = _join(root, src.options.captions_path)
    for part in (m.model.vision, m.model.llm):
        if part.name_or_path and (_looks_local(part.name_or_path) or (base / part.name_or_path).exists()):
            part.name_or_path = _join(base, part.name_or_path)
    tok = m.model.tokenizer
    if tok and (_looks_local(tok) or (base / tok).exists()):
        m.model.tokenizer = _join(base, tok)
    if m.deepspeed.config:
        m.deepspeed.config = _join(base, m.deepspeed.config)
