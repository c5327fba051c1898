"""VQAv2 / OK-VQA (questions + annotations pairs), A-OKVQA (direct and multiple-choice), GQA balanced questions.

Fixtures follow the released files: the official VQA layout (`info`, `data_subtype`, `questions` / `annotations` in
their own order, ten answers with confidences), OK-VQA's names without `v2_`, A-OKVQA's list with choices and
rationales (the test split without answers), GQA's object keyed by question id with its program fields.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shards.options import ImageOptions, ReaderOptions, ShardOptions
from shards.readers import SourceSpec, get_reader
from shards.readers.vqanative import annotations_path, ranked_answers
from shards.record import BadRow, Record
from shards.task import process_shard


def answers(*texts: str) -> list[dict]:
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


QUESTIONS = [
    {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
    {"image_id": 262148, "question": "What is he on top of?", "question_id": 262148001},
    {"image_id": 393225, "question": "Is there an annotation?", "question_id": 999},
    {"image_id": 393225, "question": "  ", "question_id": 393225000},
]
ANNOTATIONS = [  # not in the questions' order, as in the release
    {
        "question_type": "what is the man",
        "multiple_choice_answer": "picnic table",
        "answers": answers(*["picnic table", "table"] * 5),
        "image_id": 262148,
        "answer_type": "other",
        "question_id": 262148001,
    },
    {
        "question_type": "none of the above",
        "multiple_choice_answer": "down",
        "answers": answers("down", "down", "at table", "skateboard", "down", "table", "down", "down", "down", "down"),
        "image_id": 262148,
        "answer_type": "other",
        "question_id": 262148000,
    },
    {"question_type": "is", "answers": answers(*["yes"] * 10), "image_id": 393225, "question_id": 393225000},
]


def write_vqav2(folder: Path, prefix: str = "v2_", subtype: str = "val2014") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    questions = folder / f"{prefix}OpenEnded_mscoco_{subtype}_questions.json"
    header = {"info": {"year": 2017}, "license": {"name": "CC"}, "data_subtype": subtype}
    questions.write_text(
        json.dumps({**header, "task_type": "Open-Ended", "data_type": "mscoco", "questions": QUESTIONS})
    )
    (folder / f"{prefix}mscoco_{subtype}_annotations.json").write_text(
        json.dumps({**header, "annotations": ANNOTATIONS})
    )
    return questions


def read(kind: str, path: Path, image_root: str | None = None, **options) -> list[Record | BadRow]:
    spec = SourceSpec("s", kind, [str(path)], "vqa", image_root, ReaderOptions(**options))
    return list(get_reader(kind)(spec))


def qa(items: list) -> list[tuple[str, str]]:
    return [(r.conversation[0]["content"], r.conversation[1]["content"]) for r in items if isinstance(r, Record)]


def test_ranked_answers_and_annotation_names() -> None:
    assert ranked_answers(["b", "a", "a", "b", "c"]) == ["b", "a", "c"]
    assert (
        annotations_path("/d/v2_OpenEnded_mscoco_train2014_questions.json") == "/d/v2_mscoco_train2014_annotations.json"
    )
    assert annotations_path("/d/OpenEnded_mscoco_val2014_questions.json") == "/d/mscoco_val2014_annotations.json"
    with pytest.raises(ValueError, match=r"x\.json: not a VQA questions file"):
        annotations_path("/d/x.json")


def test_vqav2_most_common_answer(tmp_path: Path) -> None:
    questions = write_vqav2(tmp_path / "vqav2")
    items = read("vqav2-json", questions, "/data/coco/val2014")
    assert qa(items) == [("<image>\nWhere is he looking?", "down"), ("<image>\nWhat is he on top of?", "picnic table")]
    first = items[0]
    assert (
        first.image == "/data/coco/val2014/COCO_val2014_000000262148.jpg" and first.image_root == "/data/coco/val2014"
    )
    assert first.ids == {"question_id": 262148000, "image_id": 262148}
    assert first.meta["answers"][:3] == ["down", "down", "at table"] and first.meta["answer_type"] == "other"
    assert [str(b) for b in items[2:]] == [
        f"{questions}: questions[2]: no annotation for this question_id",
        f"{questions}: questions[3]: empty 'question'",
    ]


def test_vqav2_all_answers_is_one_row_per_distinct_answer(tmp_path: Path) -> None:
    questions = write_vqav2(tmp_path / "vqav2")
    items = read("vqav2-json", questions, answers="all")
    assert [(r.row, r.conversation[1]["content"]) for r in items if isinstance(r, Record)] == [
        (0, "down"),
        (1, "at table"),
        (2, "skateboard"),
        (3, "table"),
        (4, "picnic table"),
        (5, "table"),
    ]
    assert [(b.row, str(b).split(": ", 1)[1]) for b in items if isinstance(b, BadRow)] == [
        (6, "questions[2]: no annotation for this question_id"),
        (7, "questions[3] answer 0: empty 'question'"),
    ]
    assert items[0].image == str(tmp_path / "vqav2/COCO_val2014_000000262148.jpg")  # default: the JSON's folder


def test_okvqa_names_and_a_missing_annotations_file(tmp_path: Path) -> None:
    questions = write_vqav2(tmp_path / "okvqa", prefix="", subtype="train2014")
    items = read("okvqa-json", questions, "/coco/train2014")
    assert items[0].image == "/coco/train2014/COCO_train2014_000000262148.jpg"
    (tmp_path / "okvqa/mscoco_train2014_annotations.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"okvqa/mscoco_train2014_annotations\.json: no such file"):
        read("okvqa-json", questions)
    with pytest.raises(ValueError, match=r"kind gqa-json cannot take answers 'all'"):
        read("gqa-json", questions, answers="all")


AOKVQA = [
    {
        "split": "val",
        "image_id": 299207,
        "question_id": "22MexNkBPpdZGX6sxbxVBH",
        "question": "What is the man by the bags awaiting?",
        "choices": ["skateboarder", "train", "delivery", "cab"],
        "correct_choice_idx": 3,
        "direct_answers": ["ride", "ride", "bus", "taxi", "travelling", "traffic", "taxi", "cab", "cab", "his ride"],
        "difficult_direct_answer": False,
        "rationales": ["A train would not be on the street.", "He has bags.", "He is waiting for a taxi."],
    },
    {
        "split": "test",
        "image_id": 1,
        "question_id": "t1",
        "question": "What?",
        "choices": ["a", "b", "c", "d"],
        "difficult_direct_answer": False,
    },
    {
        "split": "val",
        "image_id": 2,
        "question_id": "v2",
        "question": "Q?",
        "choices": ["a", "b"],
        "correct_choice_idx": 5,
    },
]


def test_aokvqa_direct_and_multiple_choice(tmp_path: Path) -> None:
    path = tmp_path / "aokvqa_v1p0_val.json"
    path.write_text(json.dumps(AOKVQA))
    direct = read("aokvqa-json", path, "/coco/val2017")
    assert qa(direct) == [("<image>\nWhat is the man by the bags awaiting?", "ride")]
    assert direct[0].image == "/coco/val2017/000000299207.jpg"
    assert direct[0].meta["rationales"][2] == "He is waiting for a taxi."
    assert [str(b) for b in direct[1:]] == [
        f"{path}: [1]: missing field 'direct_answers'",
        f"{path}: [2]: missing field 'direct_answers'",
    ]
    mc = read("aokvqa-json", path, split=["val"], answers="multiple_choice")
    assert qa(mc) == [
        (
            "<image>\nWhat is the man by the bags awaiting?\nA. skateboarder\nB. train\nC. delivery\nD. cab\n"
            "Answer with the option's letter from the given choices directly.",
            "D",
        )
    ]
    assert [str(b) for b in mc[1:]] == [f"{path}: [2]: correct_choice_idx 5 is not one of the 2 choices"]
    assert [a for _, a in qa(read("aokvqa-json", path, answers="all", split=["val"]))] == [
        "ride",
        "taxi",
        "cab",
        "bus",
        "travelling",
        "traffic",
        "his ride",
    ]


def test_gqa_balanced_questions(tmp_path: Path) -> None:
    path = tmp_path / "val_balanced_questions.json"
    questions = {
        "02930152": {
            "semantic": [{"operation": "select", "dependencies": [], "argument": "sky (2486325)"}],
            "entailed": ["02930160"],
            "equivalent": ["02930152"],
            "question": "Is the sky dark?",
            "imageId": "2354786",
            "isBalanced": True,
            "groups": {"global": None, "local": "06-sky_dark"},
            "answer": "yes",
            "semanticStr": "select: sky (2486325)->verify color: dark [0]",
            "annotations": {"answer": {}, "question": {"2": "2486325"}, "fullAnswer": {"2": "2486325"}},
            "types": {"detailed": "verifyAttr", "semantic": "attr", "structural": "verify"},
            "fullAnswer": "Yes, the sky is dark.",
        },
        "07333408": {"question": "What is on the white wall?", "imageId": "2375429", "fullAnswer": "A pipe."},
    }
    path.write_text(json.dumps(questions))
    items = read("gqa-json", path, "/gqa/images")
    assert qa(items) == [("<image>\nIs the sky dark?", "yes")]
    assert (items[0].image, items[0].ids) == (
        "/gqa/images/2354786.jpg",
        {"question_id": "02930152", "imageId": "2354786"},
    )
    assert sorted(items[0].meta) == ["fullAnswer", "groups", "isBalanced", "semanticStr", "types"]
    assert str(items[1]) == f"{path}: key '07333408': missing field 'answer'"


def test_vqav2_build_reads_the_coco_image_and_counts_the_missing_one(tmp_path: Path, images) -> None:
    import webdataset as wds

    questions = write_vqav2(tmp_path / "vqav2")
    root = tmp_path / "val2014"
    root.mkdir()
    (root / "COCO_val2014_000000262148.jpg").write_bytes(images["img0.jpg"])
    items = read("vqav2-json", questions, str(root))
    process_shard(items, ShardOptions(image=ImageOptions(size=32)), str(tmp_path / "out"), 0)
    status = {
        r["row"]: (r["status"], r["error_message"])
        for r in pq.read_table(tmp_path / "out/00000_status.parquet").to_pylist()
    }
    assert status == {
        0: ("success", None),
        1: ("success", None),
        2: ("failed_to_read", f"{questions}: questions[2]: no annotation for this question_id"),
        3: ("failed_to_read", f"{questions}: questions[3]: empty 'question'"),
    }
    samples = list(wds.WebDataset([str(tmp_path / "out/00000.tar")], shardshuffle=False).decode("pil"))
    assert [(s["jpg"].size, s["json"]["conversation"][1]["content"]) for s in samples] == [
        ((32, 32), "down"),
        ((32, 32), "picnic table"),
    ]
