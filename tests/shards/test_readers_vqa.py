"""TextVQA, DocVQA, ChartQA and OCR-VQA readers on fixtures in their native layouts, splits and image paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shards.options import ReaderOptions
from shards.readers import SourceSpec, get_reader
from shards.readers.ocrvqa import extension
from shards.readers.vqa import most_common
from shards.record import BadRow, Record


def read(kind: str, paths: list[Path], image_root: str | None = None, task: str = "vqa", **options) -> list:
    spec = SourceSpec("src", kind, [str(p) for p in paths], task, image_root, ReaderOptions(**options))
    return list(get_reader(kind)(spec))


def qa(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"<image>\n{question}"}, {"role": "assistant", "content": answer}]


def bad(items) -> list[tuple[int, str]]:
    return [(b.row, b.error) for b in items if isinstance(b, BadRow)]


def test_most_common_breaks_ties_by_first_seen() -> None:
    assert most_common(["b", "a", "a", "b", "c"]) == "b"
    assert most_common(["x", "y", "y"]) == "y"


# --- TextVQA -------------------------------------------------------------------------------------------------------


def textvqa_item(qid: int, image_id: str, answers: list, set_name: str = "train", **extra) -> dict:
    return {
        "question": "what is written on the sign?",
        "image_id": image_id,
        "image_classes": ["Street sign"],
        "flickr_original_url": f"https://farm2.staticflickr.com/{image_id}_o.jpg",
        "flickr_300k_url": f"https://c4.staticflickr.com/{image_id}_z.jpg",
        "image_width": 1024,
        "image_height": 768,
        "answers": answers,
        "question_tokens": ["what", "is", "written", "on", "the", "sign"],
        "question_id": qid,
        "set_name": set_name,
        **extra,
    }


def write_textvqa(path: Path, items: list) -> Path:
    path.write_text(
        json.dumps({"dataset_type": "train", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": items})
    )
    return path


ANSWERS = ["stop", "STOP", "stop", "go", "go", "stop ", "go", "yield", "yield", "yield"]


def test_textvqa_record_target_and_image(tmp_path: Path) -> None:
    path = write_textvqa(
        tmp_path / "TextVQA_0.5.1_train.json",
        [
            textvqa_item(34602, "0054c91397f2fe05", ANSWERS),
            textvqa_item(34603, "00685bc495504d61", ["a"] * 10, set_name="val"),
            textvqa_item(34604, "abc", None),
            {"question": "q", "image_id": 5, "answers": ["a"], "question_id": 1, "set_name": "train"},
        ],
    )
    items = read("textvqa-json", [path], image_root="/data/textvqa")
    expected_meta = {
        "answers": ["stop", "STOP", "stop", "go", "go", "stop", "go", "yield", "yield", "yield"],
        "image_classes": ["Street sign"],
        "flickr_original_url": "https://farm2.staticflickr.com/0054c91397f2fe05_o.jpg",
        "flickr_300k_url": "https://c4.staticflickr.com/0054c91397f2fe05_z.jpg",
        "image_width": 1024,
        "image_height": 768,
        "question_tokens": ["what", "is", "written", "on", "the", "sign"],
        "set_name": "train",
    }
    # stop ×3 (after stripping "stop "), go ×3, yield ×3: the first seen of the most common wins.
    assert items[0] == Record(
        row=0,
        source="src",
        task="vqa",
        conversation=qa("what is written on the sign?", "stop"),
        image="/data/textvqa/train_images/0054c91397f2fe05.jpg",
        image_root="/data/textvqa",
        ids={"question_id": 34602, "image_id": "0054c91397f2fe05"},
        meta=expected_meta,
        file=str(path),
    )
    # Val images live in train_images/ too.
    assert items[1].image == "/data/textvqa/train_images/00685bc495504d61.jpg"
    assert bad(items) == [
        (2, "data[2]: missing field 'answers'"),
        (3, "data[3]: field 'image_id' is int, expected str"),
    ]


def test_textvqa_without_image_root_uses_flickr_and_filters_split(tmp_path: Path) -> None:
    path = write_textvqa(
        tmp_path / "TextVQA_0.5.1_val.json",
        [
            textvqa_item(1, "a1", ["x"] * 10, "train"),
            textvqa_item(2, "b2", ["y"] * 10, "val"),
            {"question": "no set_name", "image_id": "c3", "answers": ["z"], "question_id": 3},
            textvqa_item(4, "d4", ["w"] * 10, "val"),
        ],
    )
    items = read("textvqa-json", [path], split=["validation"])
    assert [i.row for i in items] == [0, 1, 2]
    assert items[0].image == "https://farm2.staticflickr.com/b2_o.jpg"
    assert items[0].ids == {"question_id": 2, "image_id": "b2"}
    assert bad(items) == [(1, "data[2]: missing field 'set_name'")]
    assert items[2].ids["question_id"] == 4


def test_textvqa_wrong_layout_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps([textvqa_item(1, "a", ["x"])]))
    with pytest.raises(ValueError, match=r"list\.json: expected a list at 'data', found nothing"):
        read("textvqa-json", [path])
    path.write_text(json.dumps({"data": {"oops": 1}}))
    with pytest.raises(ValueError, match=r"list\.json: expected a list at 'data', found an object"):
        read("textvqa-json", [path])


# --- DocVQA --------------------------------------------------------------------------------------------------------


def test_docvqa_records_and_split(tmp_path: Path) -> None:
    folder = tmp_path / "spdocvqa" / "train"
    folder.mkdir(parents=True)
    item = {
        "questionId": 337,
        "question": "what is the date mentioned in this letter?",
        "question_types": ["handwritten", "form"],
        "image": "documents/xnbl0037_1.png",
        "docId": 279,
        "ucsf_document_id": "xnbl0037",
        "ucsf_document_page_no": "1",
        "answers": ["1/8/93", "01/08/93"],
        "data_split": "train",
    }
    path = folder / "train_v1.0_withQT.json"
    path.write_text(
        json.dumps(
            {
                "dataset_name": "docvqa",
                "dataset_split": "train",
                "dataset_version": "1.0",
                "data": [item, {**item, "questionId": 338, "answers": []}, {**item, "data_split": "val"}],
            }
        )
    )
    items = read("docvqa-json", [path], task="ocr")
    assert items[0] == Record(
        row=0,
        source="src",
        task="ocr",
        conversation=qa("what is the date mentioned in this letter?", "1/8/93"),
        image=str(folder / "documents/xnbl0037_1.png"),
        image_root=str(folder),
        ids={"questionId": 337, "docId": 279},
        meta={
            "answers": ["1/8/93", "01/08/93"],
            "question_types": ["handwritten", "form"],
            "ucsf_document_id": "xnbl0037",
            "ucsf_document_page_no": "1",
            "data_split": "train",
        },
        file=str(path),
    )
    assert bad(items) == [(1, "data[1]: empty list 'answers'")]
    assert len(items) == 3
    assert read("docvqa-json", [path], image_root="s3://bucket/docvqa/train")[0].image == (
        "s3://bucket/docvqa/train/documents/xnbl0037_1.png"
    )
    only_val = read("docvqa-json", [path], split=["val"])
    assert [(i.row, i.ids) for i in only_val] == [(0, {"questionId": 337, "docId": 279})]


# --- ChartQA -------------------------------------------------------------------------------------------------------


def test_chartqa_two_files_subsets_and_split(tmp_path: Path) -> None:
    train = tmp_path / "ChartQA Dataset" / "train"
    val = tmp_path / "ChartQA Dataset" / "val"
    for folder in (train, val):
        folder.mkdir(parents=True)
    (train / "train_human.json").write_text(
        json.dumps(
            [
                {
                    "imgname": "41699051005347.png",
                    "query": "How many food item is shown in the bar graph?",
                    "label": "14",
                },
                {"imgname": "x.png", "query": "What is the value?", "label": 12.5},
                {"imgname": "y.png", "query": "", "label": "1"},
            ]
        )
    )
    (train / "train_augmented.json").write_text(
        json.dumps([{"imgname": "two_col_1.png", "query": "Max?", "label": "9"}])
    )
    (val / "val_human.json").write_text(json.dumps([{"imgname": "v.png", "query": "Val?", "label": "3"}]))
    items = read("chartqa-json", [tmp_path / "ChartQA Dataset" / "*" / "*.json"])
    # Path order: train/train_augmented.json, train/train_human.json, val/val_human.json.
    assert items[0] == Record(
        row=0,
        source="src",
        task="vqa",
        conversation=qa("Max?", "9"),
        image=str(train / "png" / "two_col_1.png"),
        image_root=str(train),
        ids={"imgname": "two_col_1.png"},
        meta={"subset": "augmented"},
        file=str(train / "train_augmented.json"),
    )
    assert items[1].conversation == qa("How many food item is shown in the bar graph?", "14")
    assert items[1].meta == {"subset": "human"}
    assert items[2].conversation[1]["content"] == "12.5"
    assert bad(items) == [(3, "[2]: empty 'query'")]
    assert items[4].file == str(val / "val_human.json") and items[4].row == 4
    only_val = read("chartqa-json", [tmp_path / "ChartQA Dataset" / "*" / "*.json"], image_root="/c/val", split=["val"])
    assert [(i.row, i.image) for i in only_val] == [(0, "/c/val/png/v.png")]


# --- OCR-VQA -------------------------------------------------------------------------------------------------------


def ocr_item(url: str, questions: list, answers: list, split: int) -> dict:
    return {
        "imageURL": url,
        "questions": questions,
        "answers": answers,
        "title": "Mistress of the Empire",
        "authorName": "Raymond E. Feist",
        "genre": "Science Fiction & Fantasy",
        "split": split,
    }


def write_ocrvqa(path: Path) -> Path:
    data = {
        "553393685": ocr_item(
            "http://ecx.images-amazon.com/images/I/51q5pMzW68L.jpg",
            ["Who wrote this book?", "What is the title of this book?", "Is this a romantic book?"],
            ["Raymond E. Feist", "Mistress of the Empire", "No"],
            1,
        ),
        "1250050545": ocr_item("http://ecx.images-amazon.com/images/I/61.gif?x=1", ["Q1?"], ["A1"], 2),
        "60652578": ocr_item("http://x/img", ["Q1?", "Q2?"], ["only one"], 1),
        "1931": ocr_item("http://x/1931.jpg", ["Q?"], ["A"], 3),
        "777": ocr_item("http://x/777", ["Q?"], ["A"], 1),
    }
    path.write_text(json.dumps(data, indent=2))
    return path


def test_ocrvqa_one_multiturn_record_per_image(tmp_path: Path) -> None:
    path = write_ocrvqa(tmp_path / "dataset.json")
    items = read("ocrvqa-json", [path], image_root="/data/ocr_vqa/images", task="ocr")
    assert len(items) == 5
    assert items[0] == Record(
        row=0,
        source="src",
        task="ocr",
        conversation=[
            {"role": "user", "content": "<image>\nWho wrote this book?"},
            {"role": "assistant", "content": "Raymond E. Feist"},
            {"role": "user", "content": "What is the title of this book?"},
            {"role": "assistant", "content": "Mistress of the Empire"},
            {"role": "user", "content": "Is this a romantic book?"},
            {"role": "assistant", "content": "No"},
        ],
        image="/data/ocr_vqa/images/553393685.jpg",
        image_root="/data/ocr_vqa/images",
        ids={"key": "553393685"},
        meta={
            "imageURL": "http://ecx.images-amazon.com/images/I/51q5pMzW68L.jpg",
            "title": "Mistress of the Empire",
            "authorName": "Raymond E. Feist",
            "genre": "Science Fiction & Fantasy",
            "split": 1,
        },
        file=str(path),
    )
    assert items[1].image == "/data/ocr_vqa/images/1250050545.gif"
    assert items[4].image == "/data/ocr_vqa/images/777.jpg"
    assert bad(items) == [(2, "key '60652578': 2 questions but 1 answers")]


def test_ocrvqa_split_filter_and_url_images(tmp_path: Path) -> None:
    path = write_ocrvqa(tmp_path / "dataset.json")
    train = read("ocrvqa-json", [path], split=["train"])
    assert [(i.row, type(i).__name__) for i in train] == [(0, "Record"), (1, "BadRow"), (2, "Record")]
    assert (train[0].ids, train[2].ids) == ({"key": "553393685"}, {"key": "777"})
    assert train[1].error.startswith("key '60652578'")
    assert train[0].image == "http://ecx.images-amazon.com/images/I/51q5pMzW68L.jpg"
    assert [i.ids["key"] for i in read("ocrvqa-json", [path], split=["2", "3"])] == ["1250050545", "1931"]
    assert [i.row for i in read("ocrvqa-json", [path], split=["1"], max_samples=2)] == [0, 1]


def test_url_extension() -> None:
    assert extension("http://ecx.images-amazon.com/images/I/51Z.png?x=1.jpg") == ".png"
    assert extension("http://x/noext") == ".jpg"


def test_chartqa_split_from_the_folder_or_an_error(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "questions.json").write_text(json.dumps([{"imgname": "t.png", "query": "Q?", "label": "1"}]))
    (tmp_path / "charts.json").write_text(json.dumps([{"imgname": "c.png", "query": "Q?", "label": "1"}]))
    assert [i.ids for i in read("chartqa-json", [tmp_path / "test" / "questions.json"], split=["test"])] == [
        {"imgname": "t.png"}
    ]
    assert read("chartqa-json", [tmp_path / "test" / "questions.json"], split=["train"]) == []
    with pytest.raises(ValueError, match=r"charts\.json: cannot tell the ChartQA split"):
        read("chartqa-json", [tmp_path / "charts.json"], split=["train"])
