"""`train export`: a trained model → an export folder, from a run, one stage's final weights, or a tinymix export.

Sources, in the order they are recognised:

- a `--format tinymix` export (it holds `tinymix_vlm.json`): reassembled with `load_export`, re-exported;
- a stage folder `RUN/checkpoints/NN-name/` holding `final.safetensors`: that stage's weights;
- a run folder (`OUT/run`, with `checkpoints/`): the last stage of the manifest that finished.

The last two need the manifest the run was trained with (model, tokenizer, the stage's template and image size).
"""

from __future__ import annotations

import json
from pathlib import Path

from mixer.loader.images import check_mean_std, mean_std
from mixer.manifest import Manifest
from mixer.tokenizer import load_tokenizer
from train import checkpoint
from train.model import build_vlm
from train.model.export import EXPORT_JSON, load_export
from train.model.hf_export import FORMATS, INFO_JSON, ExportInfo, write_export
from train.pipeline import FINAL, _load_final


def stage_folder(source: Path, m: Manifest) -> tuple[int, Path]:
    """(stage index, folder with final.safetensors) that `source` names: a stage folder or a run's last stage."""
    if (source / FINAL).is_file():
        names = [checkpoint.stage_dir(source.parent.parent, i, s.name).name for i, s in enumerate(m.stages)]
        if source.name not in names:
            raise ValueError(f"{source}: not a stage of this manifest (expected one of {', '.join(names)})")
        return names.index(source.name), source
    for i in reversed(range(len(m.stages))):
        folder = checkpoint.stage_dir(source, i, m.stages[i].name)
        if (folder / FINAL).is_file():
            return i, folder
    raise ValueError(f"{source}: no finished stage (no checkpoints/NN-stage/{FINAL}) for this manifest")


def export_from(source: str | Path, out: str | Path, format: str = "hf", m: Manifest | None = None) -> ExportInfo:
    """Write the export of `source` to `out` in `format` (hf | tinymix) and say what was written."""
    source = Path(source)
    if format not in FORMATS:
        raise ValueError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    if (source / INFO_JSON).is_file():
        raise ValueError(f"{source}: already an hf export; export the run or its stage folder instead")
    if (source / EXPORT_JSON).is_file():
        meta = json.loads((source / EXPORT_JSON).read_text())
        if "template" not in meta:
            raise ValueError(f"{source / EXPORT_JSON}: no template recorded (exported by save_export directly)")
        vlm, tokenizer = load_export(source)
        norm = (
            check_mean_std(meta["mean_std"]) if meta.get("mean_std") else mean_std(vlm.vision.model.config.model_type)
        )
        size, template = int(meta["image_size"]), meta["template"]
    else:
        if m is None:
            raise ValueError(f"{source}: a run or stage folder needs --manifest (the one it was trained with)")
        index, folder = stage_folder(source, m)
        stage = m.stages[index]
        tokenizer = load_tokenizer(m.model.tokenizer_path())
        vlm = build_vlm(m.model, tokenizer, image_size=stage.image_size)
        _load_final(vlm, folder)
        norm, size, template = mean_std(m.model.vision.model_type), stage.image_size, stage.template
    return write_export(vlm, tokenizer, out, image_size=size, template=template, mean_std=norm, format=format)
