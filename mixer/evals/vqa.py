"""Open-answer benchmarks: VQAv2, GQA, TextVQA, VizWiz — readers of their native files and their accuracy rules.

Soft accuracy (VQAv2, TextVQA, VizWiz) is the VQA challenge's: with 10 human answers, an answer scores
min(#other humans who gave it / 3, 1) averaged over the 10 ways of leaving one human out.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from mixer.evals.normalise import evalai_answer, gqa_answer, vqa_answer, vqa_punctuation
from mixer.evals.spec import (
    PERCENT,
    SHORT_ANSWER,
    EvalOptions,
    Item,
    coverage,
    mean,
    need,
    prediction,
    read_json,
)


def soft_accuracy(answer: str, references: list[str]) -> float:
    """Mean over each left-out reference of min(matches among the others / 3, 1); `answer` already normalised."""
    if not references:
        return 0.0
    hits = [r == answer for r in references]
    total = sum(hits)
    return mean([min(1.0, (total - h) / 3) for h in hits])


def vqa_official(answer: str, references: list[str]) -> float:
    """The VQA evaluator's rule for one answer against its references.

    The answer is fully normalised; the references only stripped, and their punctuation processed when they
    disagree (the annotation files hold references already normalised).
    """
    refs = [r.replace("\n", " ").replace("\t", " ").strip() for r in references]
    if len(set(refs)) > 1:
        refs = [vqa_punctuation(r) for r in refs]
    return soft_accuracy(vqa_answer(answer), refs)


def evalai_soft(answer: str, references: list[str]) -> float:
    """Soft accuracy with EvalAI's processor applied to the answer and to every reference (TextVQA, VizWiz)."""
    return soft_accuracy(evalai_answer(answer), [evalai_answer(r) for r in references])


def _by_type(items: list[Item], scores: list[float], key: str) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for item, s in zip(items, scores, strict=True):
        groups[str(item.meta.get(key, ""))].append(s)
    return {k: PERCENT * mean(v) for k, v in sorted(groups.items())}


# --- VQAv2 -------------------------------------------------------------------------------------------------------


def _vqav2_paths(root: Path, opts: EvalOptions) -> tuple[Path, Path]:
    s = opts.vqav2_split
    return root / f"v2_OpenEnded_mscoco_{s}_questions.json", root / f"v2_mscoco_{s}_annotations.json"


def vqav2_files(root: Path, opts: EvalOptions) -> list[Path]:
    questions, annotations = _vqav2_paths(root, opts)
    return [questions] + ([annotations] if annotations.exists() else [])


def read_vqav2(root: Path, opts: EvalOptions) -> list[Item]:
    questions_path, annotations_path = _vqav2_paths(root, opts)
    questions = need(read_json(questions_path), "questions", str(questions_path))
    annotations: dict[int, dict] = {}
    if annotations_path.exists():  # test-dev has none: answers go to EvalAI
        for a in need(read_json(annotations_path), "annotations", str(annotations_path)):
            annotations[need(a, "question_id", f"{annotations_path}: annotation")] = a
    folder = "test2015" if opts.vqav2_split.startswith("test") else opts.vqav2_split
    items = []
    for n, q in enumerate(questions):
        where = f"{questions_path}: questions[{n}]"
        qid, image_id = need(q, "question_id", where), need(q, "image_id", where)
        ann = annotations.get(qid, {})
        name = f"{folder}/COCO_{folder}_{int(image_id):012d}.jpg"
        items.append(
            Item(
                question_id=str(qid),
                image=root / name,
                image_ref=name,
                text=f"{need(q, 'question', where)}\n{SHORT_ANSWER}",
                answer=[a["answer"] for a in ann.get("answers", [])],
                meta={"answer_type": ann.get("answer_type", ""), "question_type": ann.get("question_type", "")},
            )
        )
    return items


NO_ANSWERS = "this split has no reference answers: submit upload.json to the EvalAI server"


def _unannotated(items: list[Item]) -> bool:
    return bool(items) and not any(i.answer for i in items)


def upload_vqav2(items: list[Item], preds: dict[str, dict]) -> list[dict]:
    """The EvalAI submission: `[{"question_id": int, "answer"}]`, answers through EvalAI's processor (as LLaVA)."""
    return [{"question_id": int(i.question_id), "answer": evalai_answer(prediction(preds, i))} for i in items]


def upload_vizwiz(items: list[Item], preds: dict[str, dict]) -> list[dict]:
    """The VizWiz submission: `[{"image", "answer"}]`, answers through EvalAI's processor (as LLaVA)."""
    return [{"image": i.question_id, "answer": evalai_answer(prediction(preds, i))} for i in items]


def score_vqav2(items: list[Item], preds: dict[str, dict]) -> dict:
    if _unannotated(items):
        return {"note": NO_ANSWERS, **coverage(items, preds)}
    scores = [vqa_official(prediction(preds, i), i.answer) for i in items]
    return {
        "accuracy": PERCENT * mean(scores),
        "per_answer_type": _by_type(items, scores, "answer_type"),
        **coverage(items, preds),
    }


# --- GQA ---------------------------------------------------------------------------------------------------------

GQA_FILE = "testdev_balanced_questions.json"


def read_gqa(root: Path, opts: EvalOptions) -> list[Item]:
    path = root / GQA_FILE
    data = read_json(path)
    items = []
    for qid, q in data.items():
        where = f"{path}: {qid}"
        name = f"images/{need(q, 'imageId', where)}.jpg"
        items.append(
            Item(
                question_id=str(qid),
                image=root / name,
                image_ref=name,
                text=f"{need(q, 'question', where)}\n{SHORT_ANSWER}",
                answer=need(q, "answer", where),
            )
        )
    return items


def score_gqa(items: list[Item], preds: dict[str, dict]) -> dict:
    hits = [float(gqa_answer(prediction(preds, i)) == i.answer) for i in items]
    return {"accuracy": PERCENT * mean(hits), **coverage(items, preds)}


# --- TextVQA -----------------------------------------------------------------------------------------------------

TEXTVQA_FILE = "TextVQA_0.5.1_val.json"
TEXTVQA_OCR_FILE = "TextVQA_Rosetta_OCR_v0.2_val.json"


def textvqa_files(root: Path, opts: EvalOptions) -> list[Path]:
    return [root / TEXTVQA_FILE] + ([root / TEXTVQA_OCR_FILE] if opts.ocr_tokens else [])


def _ocr_tokens(root: Path) -> dict[str, list[str]]:
    path = root / TEXTVQA_OCR_FILE
    out = {}
    for n, row in enumerate(need(read_json(path), "data", str(path))):
        where = f"{path}: data[{n}]"
        tokens = row.get("ocr_tokens")
        if tokens is None:
            tokens = [w["word"] for w in need(row, "ocr_info", where)]
        out[str(need(row, "image_id", where))] = tokens
    return out


def read_textvqa(root: Path, opts: EvalOptions) -> list[Item]:
    path = root / TEXTVQA_FILE
    ocr = _ocr_tokens(root) if opts.ocr_tokens else {}
    items = []
    for n, q in enumerate(need(read_json(path), "data", str(path))):
        where = f"{path}: data[{n}]"
        image_id = str(need(q, "image_id", where))
        text = need(q, "question", where)
        if opts.ocr_tokens:  # LLaVA's "with OCR tokens" variant
            text += f"\nReference OCR token: {', '.join(ocr.get(image_id, []))}"
        name = f"train_images/{image_id}.jpg"
        items.append(
            Item(
                question_id=str(need(q, "question_id", where)),
                image=root / name,
                image_ref=name,
                text=f"{text}\n{SHORT_ANSWER}",
                answer=list(q.get("answers", [])),
            )
        )
    return items


def score_soft_evalai(items: list[Item], preds: dict[str, dict]) -> dict:
    scores = [evalai_soft(prediction(preds, i), i.answer) for i in items]
    return {"accuracy": PERCENT * mean(scores), **coverage(items, preds)}


# --- VizWiz ------------------------------------------------------------------------------------------------------

VIZWIZ_INSTRUCTION = "When the provided information is insufficient, respond with 'Unanswerable'."


def vizwiz_files(root: Path, opts: EvalOptions) -> list[Path]:
    return [root / f"{opts.vizwiz_split}.json"]


def read_vizwiz(root: Path, opts: EvalOptions) -> list[Item]:
    (path,) = vizwiz_files(root, opts)
    split = opts.vizwiz_split
    items = []
    for n, q in enumerate(read_json(path)):
        where = f"{path}: [{n}]"
        image = need(q, "image", where)
        items.append(
            Item(
                question_id=image,  # VizWiz names a question by its image (one question per image)
                image=root / split / image,
                image_ref=f"{split}/{image}",
                text=f"{need(q, 'question', where)}\n{VIZWIZ_INSTRUCTION}\n{SHORT_ANSWER}",
                answer=[a["answer"] for a in q.get("answers", [])],
                meta={"answer_type": q.get("answer_type", "")},
            )
        )
    return items


def score_vizwiz(items: list[Item], preds: dict[str, dict]) -> dict:
    if _unannotated(items):
        return {"note": NO_ANSWERS, **coverage(items, preds)}
    scores = [evalai_soft(prediction(preds, i), i.answer) for i in items]
    return {
        "accuracy": PERCENT * mean(scores),
        "per_answer_type": _by_type(items, scores, "answer_type"),
        **coverage(items, preds),
    }
