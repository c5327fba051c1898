"""Yes / no benchmarks: POPE, MME, VSR (true / false) and Hateful Memes — readers and their official metrics.

Each item offers `choices` so a model can also be scored by the likelihood of the two answers instead of generating.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from mixer.evals.normalise import mme_yes_no, pope_yes_no, true_false
from mixer.evals.spec import (
    PERCENT,
    SHORT_ANSWER,
    BenchmarkError,
    EvalOptions,
    Item,
    coverage,
    mean,
    need,
    prediction,
    read_jsonl,
)

YES_NO = ["Yes", "No"]


def binary_metrics(predicted: list[bool], labels: list[bool]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of "yes" as the positive class, and the share of "yes" answers (percent)."""
    tp = sum(p and y for p, y in zip(predicted, labels, strict=True))
    fp = sum(p and not y for p, y in zip(predicted, labels, strict=True))
    fn = sum(y and not p for p, y in zip(predicted, labels, strict=True))
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": PERCENT * (tp + tn) / len(labels) if labels else 0.0,
        "precision": PERCENT * precision,
        "recall": PERCENT * recall,
        "f1": PERCENT * f1,
        "yes_ratio": PERCENT * sum(predicted) / len(predicted) if predicted else 0.0,
    }


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve: the chance a random positive outscores a random negative, ties counting half.

    None when one class is absent (the curve is undefined).
    """
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# --- POPE --------------------------------------------------------------------------------------------------------

POPE_SPLITS = ("random", "popular", "adversarial")


def pope_files(root: Path, opts: EvalOptions) -> list[Path]:
    return [root / f"coco_pope_{s}.json" for s in POPE_SPLITS]


def read_pope(root: Path, opts: EvalOptions) -> list[Item]:
    items = []
    for split, path in zip(POPE_SPLITS, pope_files(root, opts), strict=True):
        for n, row in read_jsonl(path):  # one JSON object per line, despite the .json name
            where = f"{path}:{n}"
            label = str(need(row, "label", where)).lower()
            if label not in ("yes", "no"):
                raise BenchmarkError(f"{where}: label must be yes or no, got {label!r}")
            image = need(row, "image", where)
            items.append(
                Item(
                    question_id=f"{split}-{need(row, 'question_id', where)}",
                    image=root / "val2014" / image,
                    image_ref=f"val2014/{image}",
                    text=f"{need(row, 'text', where)}\n{SHORT_ANSWER}",
                    answer=label,
                    choices=YES_NO,
                    meta={"split": split},
                )
            )
    return items


def score_pope(items: list[Item], preds: dict[str, dict]) -> dict:
    out: dict = {}
    for split in POPE_SPLITS:
        part = [i for i in items if i.meta["split"] == split]
        if part:
            predicted = [pope_yes_no(prediction(preds, i)) == "yes" for i in part]
            out[split] = binary_metrics(predicted, [i.answer == "yes" for i in part]) | {"n": len(part)}
    out["mean_f1"] = mean([v["f1"] for v in out.values()])
    out["mean_accuracy"] = mean([v["accuracy"] for k, v in out.items() if k in POPE_SPLITS])
    return out | coverage(items, preds)


# --- MME ---------------------------------------------------------------------------------------------------------

MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def _mme_pairs(task_dir: Path) -> list[tuple[Path, Path]]:
    """(questions .txt, image) pairs of one subtask, in either of the release's two layouts."""
    qa_dir = task_dir / "questions_answers_YN"
    txt_dir, image_dir = (qa_dir, task_dir / "images") if qa_dir.is_dir() else (task_dir, task_dir)
    pairs = []
    for txt in sorted(txt_dir.glob("*.txt")):
        images = [image_dir / (txt.stem + s) for s in _IMAGE_SUFFIXES if (image_dir / (txt.stem + s)).exists()]
        if not images:
            raise BenchmarkError(f"{txt}: no image of the same name ({', '.join(_IMAGE_SUFFIXES)})")
        pairs.append((txt, images[0]))
    return pairs


def mme_files(root: Path, opts: EvalOptions) -> list[Path]:
    tasks = [root / t for t in MME_PERCEPTION + MME_COGNITION if (root / t).is_dir()]
    if not tasks:
        raise BenchmarkError(f"{root}: no MME subtask folders ({', '.join(MME_PERCEPTION + MME_COGNITION)})")
    return [txt for t in tasks for txt, _ in _mme_pairs(t)]


def read_mme(root: Path, opts: EvalOptions) -> list[Item]:
    mme_files(root, opts)  # names the folder when it holds no subtask
    items = []
    for task in MME_PERCEPTION + MME_COGNITION:
        if not (root / task).is_dir():
            continue
        for txt, image in _mme_pairs(root / task):
            for k, line in enumerate(txt.read_text(encoding="utf-8").splitlines()):
                if not line.strip():
                    continue
                question, sep, answer = line.rpartition("\t")
                if not sep or answer.strip().lower() not in ("yes", "no"):
                    raise BenchmarkError(f"{txt}:{k + 1}: expected 'question<TAB>Yes|No'")
                ref = image.relative_to(root).as_posix()
                items.append(
                    Item(
                        question_id=f"{ref}#{k}",
                        image=image,
                        image_ref=ref,
                        text=f"{question.strip()}\n{SHORT_ANSWER}",
                        answer=answer.strip().lower(),
                        choices=YES_NO,
                        meta={"task": task, "image": ref},
                    )
                )
    return items


def score_mme(items: list[Item], preds: dict[str, dict]) -> dict:
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for i in items:
        by_task[i.meta["task"]][i.meta["image"]].append(mme_yes_no(prediction(preds, i)) == i.answer)
    tasks = {}
    for task, images in by_task.items():
        flat = [h for hits in images.values() for h in hits]
        acc = PERCENT * mean([float(h) for h in flat])
        acc_plus = PERCENT * mean([float(all(hits)) for hits in images.values()])
        tasks[task] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "n": len(flat)}
    return {
        "perception": sum(v["score"] for k, v in tasks.items() if k in MME_PERCEPTION),
        "cognition": sum(v["score"] for k, v in tasks.items() if k in MME_COGNITION),
        "subtasks": tasks,
        **coverage(items, preds),
    }


# --- VSR ---------------------------------------------------------------------------------------------------------

VSR_PROMPT = "Based on the image, is this statement true or false? {caption}"


def vsr_files(root: Path, opts: EvalOptions) -> list[Path]:
    return [root / f"{opts.vsr_split}.jsonl"]


def read_vsr(root: Path, opts: EvalOptions) -> list[Item]:
    (path,) = vsr_files(root, opts)
    items = []
    for n, row in read_jsonl(path):
        where = f"{path}:{n}"
        image = need(row, "image", where)
        items.append(
            Item(
                question_id=str(n),  # VSR rows carry no id: the line number names them
                image=root / "images" / image,
                image_ref=f"images/{image}",
                text=VSR_PROMPT.format(caption=need(row, "caption", where)),
                answer="true" if int(need(row, "label", where)) == 1 else "false",
                choices=["True", "False"],
                meta={"relation": row.get("relation", "")},
            )
        )
    return items


def score_vsr(items: list[Item], preds: dict[str, dict]) -> dict:
    hits = [true_false(prediction(preds, i)) == i.answer for i in items]
    return {"accuracy": PERCENT * mean([float(h) for h in hits]), **coverage(items, preds)}


# --- Hateful Memes -----------------------------------------------------------------------------------------------

MEMES_PROMPT = 'This is an image with: "{text}" written on it. Is it hateful? Answer yes or no.'


def memes_files(root: Path, opts: EvalOptions) -> list[Path]:
    return [root / f"{opts.hateful_split}.jsonl"]


def read_memes(root: Path, opts: EvalOptions) -> list[Item]:
    (path,) = memes_files(root, opts)
    items = []
    for n, row in read_jsonl(path):
        where = f"{path}:{n}"
        image = need(row, "img", where)
        items.append(
            Item(
                question_id=str(need(row, "id", where)),
                image=root / image,
                image_ref=image,
                text=MEMES_PROMPT.format(text=need(row, "text", where)),
                answer=int(need(row, "label", where)),
                choices=YES_NO,
            )
        )
    return items


def hateful_score(pred: dict) -> float:
    """The answer line's `score` (the model's probability of "yes", written by likelihood scoring), else 1 / 0."""
    if "score" in pred:
        return float(pred["score"])
    return 1.0 if true_false(str(pred.get("text", ""))) == "true" else 0.0


def score_memes(items: list[Item], preds: dict[str, dict]) -> dict:
    scores = [hateful_score(preds.get(i.question_id, {})) for i in items]
    labels = [i.answer == 1 for i in items]
    hits = [(s >= 0.5) == y for s, y in zip(scores, labels, strict=True)]
    area = auroc(scores, labels)
    return {
        "auroc": None if area is None else PERCENT * area,
        "accuracy": PERCENT * mean([float(h) for h in hits]),
        **coverage(items, preds),
    }
