"""What a benchmark is as data: its questions (`Item`), how its native files are read, and how answers are scored.

A `Benchmark` names the files it reads under its folder of the data root, a reader that turns them into `Item`s (the
prompt recipe applied: question + options + the benchmark's instruction), and a scorer that takes those items and an
answers map `{question_id: answer line}` and returns the benchmark's official numbers. Readers and scorers are pure
Python (no torch): `train eval` asks a model, `train score` scores anyone's answers file with the same scorer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SHORT_ANSWER = "Answer the question using a single word or phrase."
PERCENT = 100.0  # scores are reported in percent, as the papers and lmms-eval report them
OPTION_LETTER = "Answer with the option's letter from the given choices directly."


class BenchmarkError(ValueError):
    """A benchmark file is missing or malformed; the message names the file (and the row or field)."""


@dataclass(frozen=True)
class EvalOptions:
    """Choices that change the questions asked; each is recorded in the eval card."""

    ocr_tokens: bool = False
    """TextVQA: add the Rosetta OCR tokens to the prompt ("Reference OCR token: …", LLaVA's variant)."""
    vqav2_split: str = "val2014"
    """VQAv2 split: the question / annotation file pair and image folder (`test-dev2015` has no annotations)."""
    vsr_split: str = "zeroshot/test"
    """VSR split file under vsr/ (without .jsonl): `zeroshot/test` (TinyGPT-V's) or `random/test`."""
    vizwiz_split: str = "val"
    """VizWiz split: `val` (scored here) or `test` (answers go to EvalAI as upload.json)."""
    hateful_split: str = "dev_seen"
    """Hateful Memes split file under hateful_memes/ (without .jsonl)."""


@dataclass
class Item:
    """One question as the model is asked it, with its reference for the scorer."""

    question_id: str
    image: Path | bytes | None
    """The image file, or its encoded bytes when the benchmark embeds images (MMBench's base64 column)."""
    text: str
    """The user turn's words (question, options, instruction), without the image placeholder."""
    answer: Any
    """The reference in the scorer's own form (10 answers, a label, an option letter …)."""
    choices: list[str] | None = None
    """Answers to rank by likelihood instead of generating (`["Yes", "No"]`, option letters)."""
    options: dict[str, str] | None = None
    """Multiple choice: letter → option text."""
    image_ref: str = ""
    """How the questions file names the image (path under the data root, or FILE#row for embedded images)."""
    meta: dict[str, Any] = field(default_factory=dict)


Scorer = Callable[[list[Item], dict[str, dict]], dict[str, Any]]
Upload = Callable[[list[Item], dict[str, dict]], list[dict]]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its folder under the data root, its reader and its scorer."""

    name: str
    folder: str
    files: Callable[[Path, EvalOptions], list[Path]]
    """The native files it reads (the eval card hashes them); images are not listed."""
    read: Callable[[Path, EvalOptions], list[Item]]
    score: Scorer
    kind: Literal["open", "yesno", "choice"]
    """open: free answers; yesno / choice: likelihood scoring over `Item.choices` is possible."""
    doc: str
    upload: Upload | None = None
    """The evaluation server's submission file from answers (VQAv2 test-dev, VizWiz test), written as upload.json."""


def read_json(path: Path) -> Any:
    """A JSON file, or BenchmarkError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: not found") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-empty line of a JSON-lines file; BenchmarkError naming file and line."""
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: not found") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise BenchmarkError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise BenchmarkError(f"{path}:{n}: expected a JSON object")
            yield n, row


def need(row: dict, key: str, where: str) -> Any:
    """`row[key]`, or BenchmarkError naming where the row is and the missing field."""
    try:
        return row[key]
    except (KeyError, TypeError):
        raise BenchmarkError(f"{where}: missing field {key!r}") from None


def prediction(preds: dict[str, dict], item: Item) -> str:
    """The answer text for an item ("" when the answers file has none: it counts as wrong)."""
    return str(preds.get(item.question_id, {}).get("text", ""))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def coverage(items: list[Item], preds: dict[str, dict]) -> dict[str, int]:
    """How many questions there are and how many have no answer (missing answers score as wrong)."""
    return {"n": len(items), "missing": sum(1 for i in items if i.question_id not in preds)}
