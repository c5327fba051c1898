"""The benchmark table: name → `Benchmark` (its folder under the data root, reader, scorer), like shards' READERS."""

from __future__ import annotations

from pathlib import Path

from mixer.evals import choice, vqa, yesno
from mixer.evals.spec import Benchmark, BenchmarkError, EvalOptions, Item


def _one(name: str):
    return lambda root, opts: [root / name]


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "vqav2", "vqav2", vqa.vqav2_files, vqa.read_vqav2, vqa.score_vqav2, "open",
            "VQAv2: official soft accuracy with the VQA evaluator's answer normalisation", vqa.upload_vqav2,
        ),
        Benchmark(
            "gqa", "gqa", _one(vqa.GQA_FILE), vqa.read_gqa, vqa.score_gqa, "open",
            "GQA test-dev balanced: exact match after LLaVA's normalisation",
        ),
        Benchmark(
            "textvqa", "textvqa", vqa.textvqa_files, vqa.read_textvqa, vqa.score_soft_evalai, "open",
            "TextVQA val: soft accuracy, EvalAI normalisation; OCR tokens in the prompt optional",
        ),
        Benchmark(
            "vizwiz", "vizwiz", vqa.vizwiz_files, vqa.read_vizwiz, vqa.score_vizwiz, "open",
            "VizWiz val: soft accuracy, 'Unanswerable' instruction", vqa.upload_vizwiz,
        ),
        Benchmark(
            "pope", "pope", yesno.pope_files, yesno.read_pope, yesno.score_pope, "yesno",
            "POPE (COCO random / popular / adversarial): accuracy, precision, recall, F1, yes-ratio; mean F1",
        ),
        Benchmark(
            "mme", "MME_Benchmark_release_version", yesno.mme_files, yesno.read_mme, yesno.score_mme, "yesno",
            "MME: acc and acc+ per subtask; perception and cognition totals",
        ),
        Benchmark(
            "scienceqa", "scienceqa", choice.scienceqa_files, choice.read_scienceqa, choice.score_scienceqa,
            "choice", "ScienceQA-IMG: option-letter accuracy on the test questions with an image",
        ),
        Benchmark(
            "mmbench", "mmbench", choice.mmbench_files, choice.read_mmbench, choice.score_mmbench, "choice",
            "MMBench dev: circular accuracy (every rotation right) and vanilla accuracy",
        ),
        Benchmark(
            "vsr", "vsr", yesno.vsr_files, yesno.read_vsr, yesno.score_vsr, "yesno",
            "VSR (TinyGPT-V's zero-shot split): true/false accuracy",
        ),
        Benchmark(
            "iconqa", "iconqa", choice.iconqa_files, choice.read_iconqa, choice.score_iconqa, "choice",
            "IconQA test (choose_txt, fill_in_blank): accuracy",
        ),
        Benchmark(
            "hateful_memes", "hateful_memes", yesno.memes_files, yesno.read_memes, yesno.score_memes, "yesno",
            "Hateful Memes: AUROC and accuracy",
        ),
    )
}  # fmt: skip


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`; unknown names raise with the known ones listed."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def parse_benchmarks(spec: str) -> list[Benchmark]:
    """`gqa,pope` → the benchmarks, in order, each once; BenchmarkError naming an unknown one."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise BenchmarkError("--benchmarks: name at least one benchmark")
    return [get_benchmark(n) for n in dict.fromkeys(names)]


def benchmark_root(bench: Benchmark, data_root: str | Path) -> Path:
    """Where a benchmark's native files live: DATA_ROOT/<its folder>."""
    return Path(data_root) / bench.folder


def read_items(
    bench: Benchmark, data_root: str | Path, opts: EvalOptions | None = None, limit: int | None = None
) -> list[Item]:
    """The benchmark's questions in file order; `limit` keeps the first N.

    MMBench: the first N base questions, each with all its rotations, so circular scoring stays whole.
    """
    items = bench.read(benchmark_root(bench, data_root), opts or EvalOptions())
    if limit is None:
        return items
    if bench.name == "mmbench":
        keep = list(dict.fromkeys(i.meta["index"] for i in items))[:limit]
        return [i for i in items if i.meta["index"] in set(keep)]
    return items[:limit]
