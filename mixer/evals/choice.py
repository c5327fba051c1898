"""Multiple-choice benchmarks: ScienceQA-IMG, MMBench (circular and vanilla), IconQA — readers and scorers.

The prompt lists the options as `A. text` lines after the question and asks for the letter (LLaVA's recipe); the
answer's letter is found by rule (`normalise.choice_letter`), so "The answer is B." counts as B.
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from collections import defaultdict
from pathlib import Path

from mixer.evals.normalise import choice_letter, vqa_answer
from mixer.evals.spec import (
    OPTION_LETTER,
    PERCENT,
    SHORT_ANSWER,
    BenchmarkError,
    EvalOptions,
    Item,
    coverage,
    mean,
    need,
    prediction,
    read_json,
)

LETTERS = "ABCDEFGHIJ"


def choice_prompt(question: str, options: dict[str, str], hint: str = "") -> str:
    """Hint, question, one `A. text` line per option, then the instruction to answer with the letter."""
    lines = ([hint] if hint else []) + [question] + [f"{k}. {v}" for k, v in options.items()] + [OPTION_LETTER]
    return "\n".join(lines)


def picked(preds: dict[str, dict], item: Item) -> str | None:
    assert item.options is not None  # choice items always carry options
    return choice_letter(prediction(preds, item), item.options)


# --- ScienceQA-IMG -----------------------------------------------------------------------------------------------


def scienceqa_files(root: Path, opts: EvalOptions) -> list[Path]:
    return [root / "problems.json", root / "pid_splits.json"]


def read_scienceqa(root: Path, opts: EvalOptions) -> list[Item]:
    problems, splits = (read_json(p) for p in scienceqa_files(root, opts))
    items = []
    for pid in need(splits, "test", str(root / "pid_splits.json")):
        where = f"{root / 'problems.json'}: {pid}"
        p = need(problems, pid, str(root / "problems.json"))
        if not p.get("image"):  # ScienceQA-IMG: only the test questions with an image
            continue
        options = dict(zip(LETTERS, need(p, "choices", where), strict=False))
        name = f"images/test/{pid}/{p['image']}"
        items.append(
            Item(
                question_id=str(pid),
                image=root / name,
                image_ref=name,
                text=choice_prompt(need(p, "question", where), options, p.get("hint") or ""),
                answer=LETTERS[int(need(p, "answer", where))],
                choices=list(options),
                options=options,
                meta={"subject": p.get("subject", "")},
            )
        )
    return items


def score_scienceqa(items: list[Item], preds: dict[str, dict]) -> dict:
    hits = [float(picked(preds, i) == i.answer) for i in items]
    return {"accuracy": PERCENT * mean(hits), **coverage(items, preds)}


# --- MMBench -----------------------------------------------------------------------------------------------------

MMBENCH_FILES = ("mmbench_dev_20230712.tsv", "MMBench_DEV_EN.tsv")
ROUND = 1_000_000  # question_id of rotation r: index + r * ROUND (VLMEvalKit's circular numbering)


def mmbench_files(root: Path, opts: EvalOptions) -> list[Path]:
    for name in MMBENCH_FILES:
        if (root / name).exists():
            return [root / name]
    raise BenchmarkError(f"{root}: no MMBench dev TSV ({' or '.join(MMBENCH_FILES)})")


def _cell(row: dict, key: str) -> str:
    value = (row.get(key) or "").strip()
    return "" if value.lower() == "nan" else value


def read_mmbench(root: Path, opts: EvalOptions) -> list[Item]:
    (path,) = mmbench_files(root, opts)
    csv.field_size_limit(sys.maxsize)  # the image column holds whole base64 images
    items = []
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f, delimiter="\t"), 2):
            where = f"{path}:{n}"
            index = int(need(row, "index", where))
            try:
                image = base64.b64decode(need(row, "image", where), validate=True)
            except binascii.Error:
                raise BenchmarkError(f"{where}: the image column is not base64") from None
            texts = [_cell(row, k) for k in LETTERS if _cell(row, k)]
            answer = LETTERS.index(need(row, "answer", where).strip())
            for r in range(len(texts)):  # circular evaluation: every rotation of the options
                options = {LETTERS[j]: texts[(j + r) % len(texts)] for j in range(len(texts))}
                items.append(
                    Item(
                        question_id=str(index + r * ROUND),
                        image=image,
                        image_ref=f"{path.name}#{index}",
                        text=choice_prompt(need(row, "question", where), options, _cell(row, "hint")),
                        answer=LETTERS[(answer - r) % len(texts)],
                        choices=list(options),
                        options=options,
                        meta={"index": index, "round": r, "category": row.get("category", "")},
                    )
                )
    return items


def score_mmbench(items: list[Item], preds: dict[str, dict]) -> dict:
    rounds: dict[int, list[bool]] = defaultdict(list)
    category: dict[int, str] = {}
    vanilla = []
    for i in items:
        hit = picked(preds, i) == i.answer
        rounds[i.meta["index"]].append(hit)
        category[i.meta["index"]] = i.meta["category"]
        if i.meta["round"] == 0:
            vanilla.append(float(hit))
    circular = {k: float(all(v)) for k, v in rounds.items()}
    by_cat: dict[str, list[float]] = defaultdict(list)
    for k, v in circular.items():
        by_cat[category[k]].append(v)
    return {
        "circular_accuracy": PERCENT * mean(list(circular.values())),
        "vanilla_accuracy": PERCENT * mean(vanilla),
        "circular_per_category": {k: PERCENT * mean(v) for k, v in sorted(by_cat.items())},
        "questions": len(rounds),
        **coverage(items, preds),
    }


# --- IconQA ------------------------------------------------------------------------------------------------------

ICONQA_TYPES = ("choose_txt", "fill_in_blank")  # choose_img asks about several images: not a one-image VLM task


def _iconqa_dirs(root: Path) -> list[Path]:
    dirs = [d for t in ICONQA_TYPES for d in sorted((root / "test" / t).glob("*")) if (d / "data.json").exists()]
    if not dirs:
        raise BenchmarkError(f"{root / 'test'}: no {' or '.join(ICONQA_TYPES)} questions (PID/data.json)")
    return dirs


def iconqa_files(root: Path, opts: EvalOptions) -> list[Path]:
    return [d / "data.json" for d in _iconqa_dirs(root)]


def read_iconqa(root: Path, opts: EvalOptions) -> list[Item]:
    items = []
    for d in _iconqa_dirs(root):
        q = read_json(d / "data.json")
        where = str(d / "data.json")
        kind = d.parent.name
        name = (d / "image.png").relative_to(root).as_posix()
        question = need(q, "question", where)
        if kind == "choose_txt":
            options = dict(zip(LETTERS, need(q, "choices", where), strict=False))
            text, answer = choice_prompt(question, options), LETTERS[int(need(q, "answer", where))]
        else:
            options, text, answer = None, f"{question}\n{SHORT_ANSWER}", str(need(q, "answer", where))
        items.append(
            Item(
                question_id=f"{kind}/{d.name}",
                image=d / "image.png",
                image_ref=name,
                text=text,
                answer=answer,
                choices=list(options) if options else None,
                options=options,
                meta={"type": kind},
            )
        )
    return items


def score_iconqa(items: list[Item], preds: dict[str, dict]) -> dict:
    by_type: dict[str, list[float]] = defaultdict(list)
    for i in items:
        if i.options is not None:
            hit = picked(preds, i) == i.answer
        else:
            hit = vqa_answer(prediction(preds, i)) == vqa_answer(i.answer)
        by_type[i.meta["type"]].append(float(hit))
    flat = [h for v in by_type.values() for h in v]
    return {
        "accuracy": PERCENT * mean(flat),
        "per_type": {k: PERCENT * mean(v) for k, v in sorted(by_type.items())},
        **coverage(items, preds),
    }
