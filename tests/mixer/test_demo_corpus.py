from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mixer.demo import COUNTS, EVAL_COUNTS, benchmarks, write_demo_corpus
from mixer.demo.corpus import BAD_ROWS, SHORT_ANSWER
from mixer.demo.scenes import (
    COLOURS,
    SHAPES,
    Scene,
    Shape,
    absent_objects,
    caption,
    describe,
    grid_box,
    render_scene,
    scene_questions,
    swapped_objects,
)
from shards.serve import serve_folder

SCALE = 0.1
IMAGE_SUFFIXES = {".jpg", ".png"}
LLAVA_SUBROOTS = ("coco/train2017/", "gqa/images/", "ocr_vqa/images/", "textvqa/train_images/", "vg/VG_100K/")
BOX = re.compile(r"^\{<(\d+)><(\d+)><(\d+)><(\d+)>\}$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("demo")
    with serve_folder(out) as base_url:
        summary = write_demo_corpus(out, base_url, seed=0, scale=SCALE)
        yield out, base_url, summary


def _n(family: str) -> int:
    return max(1, round(COUNTS[family] * SCALE))


def _bad(summary: dict[str, Any], family: str) -> dict[str, Any]:
    (entry,) = summary["bad_rows"][family]
    return entry


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _open(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def _local(out: Path, base_url: str, url: str) -> Path:
    assert url.startswith(base_url + "/"), url
    return out / url[len(base_url) + 1 :]


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel[:3], colour, strict=True))


# --- scenes: exact text for a known scene ---------------------------------------------------------------------------


def test_scene_text_and_box_are_exact() -> None:
    scene = Scene(200, 100, "white", (Shape("circle", "red", "left", (20, 40, 60, 80)),))
    orange = Scene(100, 100, "grey", (Shape("square", "orange", "top", (40, 10, 60, 30)),))
    assert caption(scene, "cc3m") == "a red circle on the left"
    assert caption(orange, "cc3m") == "an orange square at the top"
    assert caption(scene, "laion") == "Red circle on the left"
    assert caption(orange, "cc12m") == "An orange square at the top on a grey background."
    assert caption(scene, "sbu") == "my red circle on the left"
    assert describe(orange) == "The image shows one shape on a grey background. There is an orange square at the top."
    assert grid_box(scene, scene.shapes[0]) == "{<10><40><30><80>}"
    qa = dict(scene_questions(scene))
    assert qa["What colour is the circle?"] == "red"
    assert qa["How many shapes are there?"] == "one"
    assert qa["What shape is on the left?"] == "circle"
    assert (qa["Is there a circle?"], qa["Is there a square?"]) == ("yes", "no")
    img = render_scene(scene)
    assert img.getpixel((40, 60)) == COLOURS["red"]
    assert img.getpixel((150, 20)) == (250, 250, 250)


# --- determinism ------------------------------------------------------------------------------------------------------


def test_same_seed_and_url_give_identical_bytes(corpus: tuple[Path, str, dict], tmp_path: Path) -> None:
    out, base_url, _ = corpus
    again = tmp_path / "again"
    write_demo_corpus(again, base_url, seed=0, scale=SCALE)
    first, second = _files(out), _files(again)
    assert sorted(first) == sorted(second)
    assert len(first) > 250
    for rel, data in first.items():
        assert second[rel] == data, rel


def test_other_seed_gives_other_content(corpus: tuple[Path, str, dict], tmp_path: Path) -> None:
    out, base_url, _ = corpus
    other = tmp_path / "other"
    write_demo_corpus(other, base_url, seed=1, scale=SCALE)
    for rel in ["tokenizer_corpus.txt", "laion/part-00000.parquet", "llava/llava_v1_5_mix665k.json"]:
        assert (out / rel).read_bytes() != (other / rel).read_bytes(), rel


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        write_demo_corpus(tmp_path, "http://127.0.0.1:1", scale=0)
    with pytest.raises(ValueError, match="base_url"):
        write_demo_corpus(tmp_path, "ftp://127.0.0.1:1")


def test_tiny_scale_clamps_the_bad_rows(tmp_path: Path) -> None:
    summary = write_demo_corpus(tmp_path, "http://127.0.0.1:9", scale=0.005)
    assert summary["counts"]["laion"] == 3
    assert summary["counts"]["docvqa"] == 1
    assert _bad(summary, "laion")["row"] == 2
    assert _bad(summary, "sbu")["row"] == 1
    assert len(pq.read_table(tmp_path / "laion/part-00000.parquet")) == 3


# --- summary ----------------------------------------------------------------------------------------------------------


def test_summary_counts_and_file(corpus: tuple[Path, str, dict]) -> None:
    out, base_url, summary = corpus
    assert summary["counts"] == {f: _n(f) for f in COUNTS}
    assert summary["eval"]["counts"] == {f: max(1, round(c * SCALE)) for f, c in EVAL_COUNTS.items()}
    assert json.loads((out / "demo_corpus.json").read_text()) == summary
    assert summary["base_url"] == base_url
    files = [*summary["files"].values(), *summary["eval"]["files"].values(), *summary["benchmarks"]["files"].values()]
    for rels in files:
        for rel in rels:
            assert (out / rel).is_file(), rel
    assert set(summary["bad_rows"]) == set(BAD_ROWS)
    images = [p for p in out.rglob("*") if p.suffix in IMAGE_SUFFIXES]
    assert summary["images"] + summary["eval"]["images"] + summary["benchmarks"]["images"] == len(images)


# --- native formats, parsed with plain pyarrow / csv / json ---------------------------------------------------------


def test_laion_parquet(corpus: tuple[Path, str, dict]) -> None:
    out, base_url, summary = corpus
    table = pq.read_table(out / "laion/part-00000.parquet")
    assert table.column_names == [
        "SAMPLE_ID",
        "URL",
        "TEXT",
        "HEIGHT",
        "WIDTH",
        "LICENSE",
        "NSFW",
        "similarity",
        "punsafe",
    ]
    rows = table.to_pylist()
    assert len(rows) == _n("laion")
    assert len({r["SAMPLE_ID"] for r in rows}) == len(rows)
    bad = _bad(summary, "laion")
    pngs = 0
    for i, r in enumerate(rows):
        assert re.fullmatch(re.escape(base_url) + r"/images/laion/\d{6}\.(jpg|png)", r["URL"])
        assert r["TEXT"] and r["NSFW"] in ("UNLIKELY", "UNSURE") and 0 <= r["punsafe"] <= 1
        path = _local(out, base_url, r["URL"])
        if i == bad["row"]:
            assert bad["ref"] == r["URL"]
            with pytest.raises(Image.UnidentifiedImageError):
                _open(path)
            continue
        img = _open(path)
        assert img.size == (r["WIDTH"], r["HEIGHT"])
        if path.suffix == ".png":
            pngs += 1
            assert img.mode == "RGBA" and img.getextrema()[3][0] == 0  # transparent background
    assert pngs >= 1


def _tsv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t"))


@pytest.mark.parametrize(
    ("family", "rel", "url_col"), [("cc3m", "cc3m/Train_GCC-training.tsv", 1), ("cc12m", "cc12m/cc12m.tsv", 0)]
)
def test_cc_tsv_column_order(corpus: tuple[Path, str, dict], family: str, rel: str, url_col: int) -> None:
    out, base_url, summary = corpus
    rows = _tsv(out / rel)
    assert len(rows) == _n(family)
    bad = _bad(summary, family)
    for i, row in enumerate(rows):
        assert len(row) == 2, (rel, i)
        url, text = row[url_col], row[1 - url_col]
        assert url.startswith(base_url + f"/images/{family}/")
        assert not text.startswith("http")
        assert (text == "") == (family == "cc12m" and i == bad["row"])
        path = _local(out, base_url, url)
        if family == "cc3m" and i == bad["row"]:
            assert not path.exists() and bad["ref"] == url
        else:
            _open(path)


def test_sbu_parallel_lists(corpus: tuple[Path, str, dict]) -> None:
    out, base_url, summary = corpus
    data = json.loads((out / "sbu/sbu-captions-all.json").read_text())
    assert list(data) == ["image_urls", "user_ids", "captions"]
    assert len(data["image_urls"]) == len(data["user_ids"]) == len(data["captions"]) == _n("sbu")
    bad = _bad(summary, "sbu")
    assert data["image_urls"][bad["row"]].startswith("ftp://")
    for i, url in enumerate(data["image_urls"]):
        if i != bad["row"]:
            _open(_local(out, base_url, url))
    assert all(re.fullmatch(r"\d{8}@N\d\d", u) for u in data["user_ids"])


def test_llava_rows(corpus: tuple[Path, str, dict]) -> None:
    out, _, summary = corpus
    rows = json.loads((out / "llava/llava_v1_5_mix665k.json").read_text())
    assert len(rows) == _n("llava")
    bad = _bad(summary, "llava")
    placements, subroots, text_only, multi_turn, grounded = set(), set(), 0, 0, 0
    for i, row in enumerate(rows):
        assert list(row) in (["id", "image", "conversations"], ["id", "conversations"])
        turns = row["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        multi_turn += len(turns) > 2
        placeholders = sum(t["value"].count("<image>") for t in turns)
        if "image" not in row:
            text_only += 1
            assert placeholders == 0
            continue
        assert placeholders == 1
        first = turns[0]["value"]
        assert first.startswith("<image>\n") or first.endswith("\n<image>")
        placements.add("start" if first.startswith("<image>\n") else "end")
        subroots.add(next(s for s in LLAVA_SUBROOTS if row["image"].startswith(s)))
        path = out / "llava" / row["image"]
        if i == bad["row"]:
            assert bad["ref"] == row["image"] and not path.exists()
            continue
        img = _open(path).convert("RGB")
        for q, a in zip(turns[::2], turns[1::2], strict=True):
            m = re.fullmatch(r"(?:<image>\n)?\[refer\] where is the (\w+) (\w+)\?(?:\n<image>)?", q["value"])
            if m:  # the box's centre lies on a shape of the named colour
                grounded += 1
                x1, y1, x2, y2 = (int(v) for v in BOX.fullmatch(a["value"]).groups())
                assert 0 <= x1 < x2 <= 100 and 0 <= y1 < y2 <= 100
                centre = ((x1 + x2) * img.width // 200, (y1 + y2) * img.height // 200)
                assert _near(img.getpixel(centre), COLOURS[m.group(1)]), (row["id"], q["value"])
    assert placements == {"start", "end"}
    assert subroots == set(LLAVA_SUBROOTS)
    assert text_only >= 1 and multi_turn >= 1 and grounded >= 1


def test_textvqa(corpus: tuple[Path, str, dict]) -> None:
    out, _, _ = corpus
    doc = json.loads((out / "textvqa/TextVQA_0.5.1_train.json").read_text())
    assert {k: doc[k] for k in ("dataset_name", "dataset_type", "dataset_version")} == {
        "dataset_name": "textvqa",
        "dataset_type": "train",
        "dataset_version": "0.5.1",
    }
    assert len(doc["data"]) == _n("textvqa")
    for row in doc["data"]:
        assert len(row["answers"]) == 10 and row["set_name"] == "train"
        assert {"image_id", "question_id", "question", "image_classes", "image_width", "image_height"} <= set(row)
        img = _open(out / "textvqa/train_images" / f"{row['image_id']}.jpg")
        assert img.size == (row["image_width"], row["image_height"])
    assert len({r["question_id"] for r in doc["data"]}) == len(doc["data"])


def test_ocrvqa(corpus: tuple[Path, str, dict]) -> None:
    out, base_url, summary = corpus
    books = json.loads((out / "ocrvqa/dataset.json").read_text())
    assert len(books) == _n("ocrvqa")
    bad = _bad(summary, "ocrvqa")
    assert {b["split"] for b in books.values()} == {1, 2, 3}
    for i, (key, book) in enumerate(books.items()):
        assert list(book) == ["imageURL", "questions", "answers", "title", "authorName", "genre", "split"]
        assert len(book["questions"]) == len(book["answers"]) == 4
        assert book["answers"][:3] == [book["authorName"], book["title"], book["genre"]]
        path = out / "ocrvqa/images" / (key + Path(book["imageURL"]).suffix)
        assert _local(out, base_url, book["imageURL"]) == path
        if i == bad["row"]:
            assert bad["ref"] == book["imageURL"] and not path.exists()
        else:
            _open(path)
    assert any(Path(b["imageURL"]).suffix == ".png" for b in books.values())


def test_chartqa(corpus: tuple[Path, str, dict]) -> None:
    out, _, _ = corpus
    human = json.loads((out / "chartqa/train/train_human.json").read_text())
    augmented = json.loads((out / "chartqa/train/train_augmented.json").read_text())
    assert len(human) + len(augmented) == _n("chartqa")
    for row in human + augmented:
        assert list(row) == ["imgname", "query", "label"]
        _open(out / "chartqa/train/png" / row["imgname"])
    values = [r for r in augmented if r["query"].startswith("What is the value of")]
    assert values and all(r["label"].isdigit() for r in values)


def test_docvqa(corpus: tuple[Path, str, dict]) -> None:
    out, _, _ = corpus
    doc = json.loads((out / "docvqa/train/train_v1.0.json").read_text())
    assert (doc["dataset_name"], doc["dataset_split"]) == ("docvqa", "train")
    assert len(doc["data"]) == _n("docvqa")
    for row in doc["data"]:
        assert row["image"].startswith("documents/") and row["answers"]
        assert _open(out / "docvqa/train" / row["image"]).mode == "L"


# --- serving, eval split, tokenizer text ----------------------------------------------------------------------------


def test_urls_are_served_with_the_image_bytes(corpus: tuple[Path, str, dict]) -> None:
    out, base_url, summary = corpus
    urls = pq.read_table(out / "laion/part-00000.parquet").column("URL").to_pylist()
    urls += [r[1] for r in _tsv(out / "cc3m/Train_GCC-training.tsv")]
    urls += [r[0] for r in _tsv(out / "cc12m/cc12m.tsv")]
    urls += json.loads((out / "sbu/sbu-captions-all.json").read_text())["image_urls"]
    urls += [b["imageURL"] for b in json.loads((out / "ocrvqa/dataset.json").read_text()).values()]
    missing = {_bad(summary, "cc3m")["ref"], _bad(summary, "ocrvqa")["ref"]}
    assert missing <= set(urls)
    served = 0
    for url in urls:
        if url in missing:
            with pytest.raises(urllib.error.HTTPError) as e:
                _fetch(url)
            assert e.value.code == 404
        elif url != _bad(summary, "sbu")["ref"]:
            assert _fetch(url) == _local(out, base_url, url).read_bytes()
            served += 1
    assert served == len(urls) - 3
    with pytest.raises(Image.UnidentifiedImageError):  # laion's planted HTML page is served as it is
        Image.open(io.BytesIO(_fetch(_bad(summary, "laion")["ref"])))


def test_eval_split_is_held_out(corpus: tuple[Path, str, dict]) -> None:
    out, _, summary = corpus
    items = json.loads((out / "eval/eval.json").read_text())
    assert len(items) == sum(summary["eval"]["items"].values())
    assert {i["source"] for i in items} == set(COUNTS)
    for item in items:
        assert list(item) == ["id", "source", "task", "image", "question", "answer"]
        assert item["answer"] and "<image>" not in item["question"]
        assert (item["question"] == "") == (item["task"] == "caption")
        _open(out / "eval" / item["image"])
    assert len({i["id"] for i in items}) == len(items)
    llava = [i for i in items if i["source"] == "llava"]
    assert all(i["question"].endswith(SHORT_ANSWER) for i in llava)

    def digests(paths: list[Path]) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}

    images = [p for p in out.rglob("*") if p.suffix in IMAGE_SUFFIXES]
    held_out = [p for p in images if p.relative_to(out).parts[0] == "eval"]
    train = [p for p in images if p.relative_to(out).parts[0] not in ("eval", "benchmarks")]
    assert held_out and train
    assert not digests(held_out) & digests(train)
    # The eval files are in the native formats too, with the validation file names.
    assert len(_tsv(out / "eval/cc3m/Validation_GCC-1.1.0-Validation.tsv")) == summary["eval"]["counts"]["cc3m"]
    val = json.loads((out / "eval/textvqa/TextVQA_0.5.1_val.json").read_text())
    assert {r["set_name"] for r in val["data"]} == {"val"}
    assert {b["split"] for b in json.loads((out / "eval/ocrvqa/dataset.json").read_text()).values()} == {3}


def test_tokenizer_corpus_holds_the_training_text(corpus: tuple[Path, str, dict]) -> None:
    out, _, _ = corpus
    lines = (out / "tokenizer_corpus.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert all(line and "<image>" not in line and line == line.strip() for line in lines)
    text = set(lines)
    assert {r[0] for r in _tsv(out / "cc3m/Train_GCC-training.tsv")} <= text
    for row in json.loads((out / "llava/llava_v1_5_mix665k.json").read_text()):
        for turn in row["conversations"]:
            assert " ".join(turn["value"].replace("<image>", " ").split()) in text
    assert {a for b in json.loads((out / "ocrvqa/dataset.json").read_text()).values() for a in b["answers"]} <= text


# --- held-out benchmarks: POPE and VQAv2 in their native layouts -----------------------------------------------------

POPE_IMAGES = max(1, round(benchmarks.POPE_IMAGES * SCALE))
VQAV2_IMAGES = max(1, round(benchmarks.VQAV2_IMAGES * SCALE))
OBJECT = re.compile(r"^Is there an? (\w+) (\w+) in the image\?$")


def test_object_helpers_are_exact() -> None:
    scene = Scene(
        200,
        200,
        "white",
        (Shape("circle", "red", "left", (10, 90, 50, 130)), Shape("square", "blue", "top", (80, 20, 120, 60))),
    )
    assert swapped_objects(scene) == ["red square", "blue circle"]
    assert len(absent_objects(scene)) == len(COLOURS) * len(SHAPES) - 2
    assert "red circle" not in absent_objects(scene) and "red triangle" in absent_objects(scene)


def _pope(out: Path, split: str) -> list[dict[str, Any]]:
    text = (out / f"benchmarks/pope/coco_pope_{split}.json").read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def _colours_and_kinds(img: Image.Image) -> set[str]:
    """The colour-shape objects drawn in a demo scene, read back from its pixels by colour and fill ratio."""
    rgb = img.convert("RGB")
    found = set()
    for name, colour in COLOURS.items():
        pts = [
            (x, y)
            for x in range(0, rgb.width, 2)
            for y in range(0, rgb.height, 2)
            if _near(rgb.getpixel((x, y)), colour, 30)
        ]
        if len(pts) < 20:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        box = (max(xs) - min(xs) + 2) * (max(ys) - min(ys) + 2) / 4
        fill = len(pts) / box  # square ~1, circle ~pi/4, triangle ~1/2
        found.add(f"{name} {'square' if fill > 0.9 else 'circle' if fill > 0.65 else 'triangle'}")
    return found


def test_pope_files(corpus: tuple[Path, str, dict]) -> None:
    out, _, summary = corpus
    per_file = POPE_IMAGES * 2 * benchmarks.POPE_PER_IMAGE
    assert summary["benchmarks"]["questions"] == {
        "pope_random": per_file,
        "pope_popular": per_file,
        "pope_adversarial": per_file,
        "vqav2": VQAV2_IMAGES * benchmarks.VQAV2_PER_IMAGE,
    }
    positives = {}
    for split in benchmarks.POPE_SPLITS:
        rows = _pope(out, split)
        assert len(rows) == per_file
        assert [list(r) for r in rows] == [["question_id", "image", "text", "label"]] * per_file
        assert [r["question_id"] for r in rows] == list(range(1, per_file + 1))
        assert sum(r["label"] == "yes" for r in rows) == sum(r["label"] == "no" for r in rows) == per_file // 2
        by_image: dict[str, dict[str, set[str]]] = {}
        for r in rows:
            assert re.fullmatch(r"COCO_val2014_\d{12}\.jpg", r["image"])
            colour, kind = OBJECT.fullmatch(r["text"]).groups()
            by_image.setdefault(r["image"], {"yes": set(), "no": set()})[r["label"]].add(f"{colour} {kind}")
        assert len(by_image) == POPE_IMAGES
        for image, asked in by_image.items():
            drawn = _colours_and_kinds(_open(out / "benchmarks/pope/val2014" / image))
            assert asked["yes"] <= drawn and not asked["no"] & drawn, (split, image, asked, drawn)
            assert len(asked["yes"]) == len(asked["no"]) == benchmarks.POPE_PER_IMAGE
            if split == "adversarial":  # the hard negatives share their colour and their shape with drawn objects
                colours, kinds = {o.split()[0] for o in drawn}, {o.split()[1] for o in drawn}
                assert all(o.split()[0] in colours or o.split()[1] in kinds for o in asked["no"])
        positives[split] = {i: a["yes"] for i, a in by_image.items()}
    # the same present objects are asked in all three files, as in POPE
    assert positives["random"] == positives["popular"] == positives["adversarial"]


def test_vqav2_files(corpus: tuple[Path, str, dict]) -> None:
    out, _, _ = corpus
    root = out / "benchmarks/vqav2"
    questions = json.loads((root / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    annotations = json.loads((root / "v2_mscoco_val2014_annotations.json").read_text())
    assert list(questions) == ["info", "task_type", "data_type", "license", "data_subtype", "questions"]
    assert (questions["task_type"], questions["data_type"], questions["data_subtype"]) == (
        "Open-Ended",
        "mscoco",
        "val2014",
    )
    assert list(annotations) == ["info", "license", "data_subtype", "annotations", "data_type"]
    n = VQAV2_IMAGES * benchmarks.VQAV2_PER_IMAGE
    assert len(questions["questions"]) == len(annotations["annotations"]) == n
    for q, a in zip(questions["questions"], annotations["annotations"], strict=True):
        assert list(q) == ["image_id", "question", "question_id"]
        assert (a["question_id"], a["image_id"]) == (q["question_id"], q["image_id"])
        answers = [x["answer"] for x in a["answers"]]
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        assert answers.count(a["multiple_choice_answer"]) >= 7
        assert a["answer_type"] in ("yes/no", "number", "other")
        if a["answer_type"] == "number":
            assert a["multiple_choice_answer"] in ("1", "2", "3")
        _open(root / f"val2014/COCO_val2014_{q['image_id']:012d}.jpg")
    assert len({q["question_id"] for q in questions["questions"]}) == n


def test_benchmark_images_are_held_out(corpus: tuple[Path, str, dict]) -> None:
    """No benchmark image is a training image, by file or by pixels, and no training file points into benchmarks/
    (the shards are built from what the training files name, so no benchmark image reaches a shard)."""
    out, base_url, summary = corpus
    images = [p for p in out.rglob("*") if p.suffix in IMAGE_SUFFIXES]
    bench = [p for p in images if p.relative_to(out).parts[0] == "benchmarks"]
    train = [p for p in images if p.relative_to(out).parts[0] not in ("eval", "benchmarks")]
    assert len(bench) == summary["benchmarks"]["images"] == POPE_IMAGES + VQAV2_IMAGES
    planted = {_local(out, base_url, _bad(summary, "laion")["ref"])}  # the HTML page under a .jpg name
    pixels = {hashlib.sha256(_open(p).convert("RGB").tobytes()).hexdigest() for p in train if p not in planted}
    files = {hashlib.sha256(p.read_bytes()).hexdigest() for p in train}
    for p in bench:
        assert hashlib.sha256(p.read_bytes()).hexdigest() not in files, p
        assert hashlib.sha256(_open(p).convert("RGB").tobytes()).hexdigest() not in pixels, p
    for family, rels in summary["files"].items():
        for rel in rels:
            assert not rel.startswith("benchmarks/"), family
            assert b"benchmarks/" not in (out / rel).read_bytes(), rel
