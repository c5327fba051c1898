"""Answers and questions files: LLaVA's answers-file form read and written, and an answers file scored.

An answers file has one `{"question_id", "prompt", "text"}` object per line (LLaVA's form); `--questions-only` writes
`{"question_id", "image", "text", "options"?}` lines.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mixer.evals.spec import Benchmark, BenchmarkError, EvalOptions, Item
from mixer.evals.table import read_items


def read_answers(path: str | Path) -> dict[str, dict]:
    """question_id (as text) → answer line, from JSON lines or one JSON list.

    JSON lines: LLaVA's answers file (lmms-eval's after conversion); a JSON list: an EvalAI upload, whose `answer`
    field stands for `text`. BenchmarkError names the file and line of a bad row.
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: not found") from None
    rows: list[tuple[str, Any]] = []
    if raw.lstrip().startswith("["):
        try:
            rows = [(f"{path}: [{n}]", r) for n, r in enumerate(json.loads(raw))]
        except ValueError as e:
            raise BenchmarkError(f"{path}: not valid JSON ({e})") from None
    else:
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"{path}:{n}", json.loads(line)))
                except ValueError as e:
                    raise BenchmarkError(f"{path}:{n}: not valid JSON ({e})") from None
    out = {}
    for where, row in rows:
        if not isinstance(row, dict) or "question_id" not in row:
            raise BenchmarkError(f"{where}: expected an object with question_id and text")
        if "text" not in row and "answer" in row:
            row = {**row, "text": row["answer"]}
        if "text" not in row:
            raise BenchmarkError(f"{where}: no text (or answer) field")
        out[str(row["question_id"])] = row
    return out


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def question_rows(items: list[Item]) -> list[dict]:
    """The `--questions-only` lines: question_id, image (under the benchmark's folder), text, options if any."""
    rows = []
    for i in items:
        row: dict[str, Any] = {"question_id": i.question_id, "image": i.image_ref, "text": i.text}
        if i.options:
            row["options"] = i.options
        rows.append(row)
    return rows


def score_answers(
    bench: Benchmark,
    data_root: str | Path,
    predictions: str | Path,
    opts: EvalOptions | None = None,
    limit: int | None = None,
) -> dict:
    """`train score`: the benchmark's scores for an answers file (questions it lacks count as wrong)."""
    items = read_items(bench, data_root, opts, limit)
    return bench.score(items, read_answers(predictions))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
