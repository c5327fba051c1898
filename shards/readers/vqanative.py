"""vqav2-json, okvqa-json, aokvqa-json, gqa-json: the VQA natives MiniGPT-v2 / TinyGPT-V's stage 4 mix → records.

- VQAv2 and OK-VQA ship a questions file and an annotations file per split, paired by name:
  `v2_OpenEnded_mscoco_train2014_questions.json` ↔ `v2_mscoco_train2014_annotations.json` (OK-VQA: the same names
  without `v2_`). `paths` name the questions files; each one's annotations file is found next to it (missing: a
  `FileNotFoundError` naming it) and held in memory by `question_id`. Questions are
  `{questions: [{image_id, question, question_id}]}`, annotations `{annotations: [{question_id, answers: [{answer,
  answer_confidence, answer_id}] ×10, multiple_choice_answer, answer_type, question_type}]}`. The image is
  `{image_root}/COCO_{subtype}_{image_id:012d}.jpg`, the subtype (`train2014`, `val2014`) from the file name.
- A-OKVQA: `aokvqa_v1p0_{split}.json`, a list of `{split, image_id, question_id, question, choices, correct_choice_idx,
  direct_answers ×10, difficult_direct_answer, rationales}`; the image is `{image_root}/{image_id:012d}.jpg` (COCO
  2017). `options.answers: multiple_choice` lists the choices as `A. …` lines and trains their letter (LLaVA-1.5's
  prompt); otherwise the direct answers. Rationales go to `meta`. Split filter on `split`.
- GQA: `{train,val,testdev}_balanced_questions.json`, an object `question_id → {imageId, question, answer,
  fullAnswer, types, isBalanced, groups, semanticStr, semantic, annotations, entailed, equivalent}`. The target is
  the short `answer`; `fullAnswer`, `types`, `groups`, `isBalanced` and `semanticStr` go to `meta` (the parsed
  program and pointers are left out: large and unused). The image is `{image_root}/{imageId}.jpg`.

Answers (VQAv2, OK-VQA, A-OKVQA direct): `options.answers: most_common` (default) trains the most common of the ten
(ties: the first seen), as LLaVA does; `all` makes one input row per distinct answer, most common first (where:
`questions[3] answer 1`). All ten are kept in `meta['answers']` either way. Without `image_root` images are looked
for in the folder of the JSON file; a local image must stay inside its root once resolved.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from shards.fs import join
from shards.readers.common import (
    Family,
    Raw,
    RowError,
    Sample,
    SourceSpec,
    get_field,
    get_strings,
    get_text,
    qa_conversation,
    read_rows,
)
from shards.readers.files import folder_of
from shards.readers.jsonstream import json_items, json_pairs
from shards.record import BadRow, Record

COCO_SUBTYPE = re.compile(r"_((?:train|val|test-dev|test)\d{4})_questions\.json$")
ANSWER_MODES = frozenset({"most_common", "all"})
LETTERS = "ABCDEFGHIJ"
MC_PROMPT = "Answer with the option's letter from the given choices directly."
GQA_META = ("fullAnswer", "types", "groups", "isBalanced", "semanticStr")


def ranked_answers(answers: list[str]) -> list[str]:
    """Distinct answers, most common first; equally common ones in the order first seen."""
    counts = Counter(answers)
    return sorted(counts, key=lambda a: (-counts[a], answers.index(a)))


def _root(spec: SourceSpec, path: str) -> str:
    return spec.image_root if spec.image_root is not None else folder_of(path)


def _expand(raw: Raw, answers: list[str] | None, spec: SourceSpec) -> Iterator[Raw]:
    """One raw row per distinct answer under `answers: all`, else the row itself (its target picked in convert)."""
    if spec.options.answers != "all" or not answers:
        yield raw._replace(value=(raw.value, None))
        return
    for k, answer in enumerate(ranked_answers(answers)):
        yield Raw((raw.value, answer), raw.line, f"{raw.where} answer {k}")


def _target(answers: list[str], chosen: str | None) -> str:
    return chosen if chosen is not None else ranked_answers(answers)[0]


# VQAv2 / OK-VQA


def annotations_path(questions: str) -> str:
    """The annotations file paired with a questions file (VQAv2 and OK-VQA naming)."""
    folder, name = os.path.split(questions) if "://" not in questions else questions.rsplit("/", 1)
    if not name.endswith("_questions.json"):
        raise ValueError(f"{questions}: not a VQA questions file (expected a name ending in _questions.json)")
    paired = (
        name.replace("OpenEnded_", "").replace("MultipleChoice_", "").replace("_questions.json", "_annotations.json")
    )
    return f"{folder}/{paired}" if folder else paired


def _vqa_annotations(path: str) -> dict[Any, dict[str, Any]]:
    out = {}
    for raw in json_items(path, "annotations"):
        if raw.error is not None:
            raise ValueError(f"{path}: {raw.where}: {raw.error}")
        if isinstance(raw.value, dict) and "question_id" in raw.value:
            out[raw.value["question_id"]] = raw.value
    return out


def _vqa_items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    found = COCO_SUBTYPE.search(path)
    if found is None:
        raise ValueError(f"{path}: cannot tell the COCO image set (train2014, val2014, ...) from the file name")
    annotations = _vqa_annotations(annotations_path(path))
    for raw in json_items(path, "questions"):
        if raw.error is not None:
            yield raw
            continue
        item = raw.value
        ann = annotations.get(item.get("question_id")) if isinstance(item, dict) else None
        value = {"q": item, "ann": ann, "subtype": found.group(1)}
        yield from _expand(raw._replace(value=value), _vqa_answers(ann, strict=False), spec)


def _vqa_answers(ann: Any, strict: bool = True) -> list[str] | None:
    try:
        if not isinstance(ann, dict):
            raise RowError("no annotation for this question_id")
        answers = get_field(ann, "answers", list)
        out = [get_text(a, "answer") for a in answers]
        if not out:
            raise RowError("empty 'answers'")
        return out
    except RowError:
        if strict:
            raise
        return None


def _vqa_convert(value: Any, path: str, spec: SourceSpec) -> Sample:
    row, chosen = value
    item, ann = row["q"], row["ann"]
    question = get_text(item, "question")
    image_id = get_field(item, "image_id", int)
    answers = _vqa_answers(ann)
    assert answers is not None
    root = _root(spec, path)
    image = join(root, f"COCO_{row['subtype']}_{image_id:012d}.jpg")
    ids = {"question_id": item.get("question_id"), "image_id": image_id}
    meta = {"answers": answers, **{k: ann[k] for k in ("answer_type", "question_type") if k in ann}}
    return Sample(qa_conversation([(question, _target(answers, chosen))]), image, ids, meta, root)


# A-OKVQA


def _aokvqa_items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    for raw in json_items(path):
        direct = raw.value.get("direct_answers") if isinstance(raw.value, dict) else None
        strings = direct if isinstance(direct, list) and all(isinstance(a, str) for a in direct) else None
        yield from _expand(raw, strings, spec)


def _aokvqa_convert(value: Any, path: str, spec: SourceSpec) -> Sample:
    item, chosen = value
    question = get_text(item, "question")
    image_id = get_field(item, "image_id", int)
    meta = {k: item[k] for k in ("rationales", "difficult_direct_answer", "split") if k in item}
    if spec.options.answers == "multiple_choice":
        choices = get_strings(item, "choices")
        correct = get_field(item, "correct_choice_idx", int)
        if not 0 <= correct < len(choices) <= len(LETTERS):
            raise RowError(f"correct_choice_idx {correct} is not one of the {len(choices)} choices")
        listed = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        pair = (f"{question}\n{listed}\n{MC_PROMPT}", LETTERS[correct])
        meta["choices"] = choices
    else:
        answers = [a.strip() for a in get_strings(item, "direct_answers")]
        pair = (question, _target(answers, chosen))
        meta["answers"] = answers
    root = _root(spec, path)
    image = join(root, f"{image_id:012d}.jpg")
    ids = {"question_id": item.get("question_id"), "image_id": image_id}
    return Sample(qa_conversation([pair]), image, ids, meta, root)


# GQA


def _gqa_convert(pair: Any, path: str, spec: SourceSpec) -> Sample:
    question_id, item = pair
    question = get_text(item, "question")
    answer = get_text(item, "answer")
    image_id = get_text(item, "imageId")
    root = _root(spec, path)
    meta = {k: item[k] for k in GQA_META if k in item}
    ids = {"question_id": question_id, "imageId": image_id}
    return Sample(qa_conversation([(question, answer)]), join(root, f"{image_id}.jpg"), ids, meta, root)


VQAV2 = Family(_vqa_items, _vqa_convert, answers=ANSWER_MODES)
AOKVQA = Family(
    _aokvqa_items,
    _aokvqa_convert,
    split_of=lambda value, path: get_field(value[0], "split"),
    answers=ANSWER_MODES | {"multiple_choice"},
)
GQA = Family(lambda path, spec: json_pairs(path), _gqa_convert)


def read_vqav2(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a vqav2-json or okvqa-json source."""
    return read_rows(spec, VQAV2)


def read_aokvqa(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of an aokvqa-json source."""
    return read_rows(spec, AOKVQA)


def read_gqa(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a gqa-json source."""
    return read_rows(spec, GQA)
