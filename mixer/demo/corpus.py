"""`write_demo_corpus`: a small seeded corpus in the native layouts of nine VLM dataset families, plus a held-out split.

The families are LAION, CC3M, CC12M, SBU, LLaVA, TextVQA, OCR-VQA, ChartQA and DocVQA; the corpus also holds the text
for training a demo tokenizer.

Layout under `out` (paths in the native files are exactly as the real datasets write them):

    images/{laion,cc3m,cc12m,sbu}/NNNNNN.jpg  served over HTTP; the URL families point at base_url + /images/...
    laion/part-00000.parquet                  URL, TEXT, SAMPLE_ID, WIDTH, HEIGHT, ... (every 12th image a RGBA .png)
    cc3m/Train_GCC-training.tsv               caption<TAB>url
    cc12m/cc12m.tsv                           url<TAB>caption
    sbu/sbu-captions-all.json                 {image_urls, user_ids, captions}
    llava/llava_v1_5_mix665k.json             image root llava/ (as LLaVA's playground/data): llava/{coco/train2017,
                                              gqa/images,ocr_vqa/images,textvqa/train_images,vg/VG_100K}/...
    textvqa/TextVQA_0.5.1_train.json          images textvqa/train_images/{image_id}.jpg
    ocrvqa/dataset.json                       images ocrvqa/images/{key}{ext of imageURL}; imageURL is served too
    chartqa/train/train_{human,augmented}.json images chartqa/train/png/{imgname}
    docvqa/train/train_v1.0.json              images docvqa/train/documents/*.png (grey-scale)
    eval/...                                  the held-out split in the same layouts (validation file names:
                                              cc3m/Validation_GCC-1.1.0-Validation.tsv, textvqa/TextVQA_0.5.1_val.json,
                                              chartqa/val/val_*.json, docvqa/val/val_v1.0.json; OCR-VQA split 3),
                                              URLs under base_url + /eval/images/...
    eval/eval.json                            the same held-out items as a flat list (see `EvalItem`)
    benchmarks/{pope,vqav2}/...               held-out POPE and VQAv2 files about new scenes (see `benchmarks`)
    tokenizer_corpus.txt                      every training caption, question and answer, one per line
    demo_corpus.json                          the summary `write_demo_corpus` returns

The eval split and the benchmarks share no image with training: an image whose bytes equal a training image's is
redrawn.

Deliberately bad training rows (listed in the summary's `bad_rows`, so the build's error paths run in the demo):
    laion   row 4: the URL serves an HTML page under a .jpg name (image decoding fails)
    cc3m    row 3: the URL returns 404 (the image was never written)
    cc12m   row 2: the caption is empty
    sbu     row 5: the URL has an ftp:// scheme
    llava   row 9: the image file is missing under the image root
    ocrvqa  key 6: the image was never downloaded (no local file; its imageURL returns 404)
(Row numbers are 0-based positions in the file; with a small `scale` they are clamped to the last row.)
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from PIL import Image

from mixer.demo import benchmarks, formats, scenes
from mixer.evalset import EvalItem

T = TypeVar("T")

# Rows per family at scale 1 (OCR-VQA: image keys, each with four questions).
COUNTS: dict[str, int] = {
    "laion": 600,
    "cc3m": 400,
    "cc12m": 300,
    "sbu": 300,
    "llava": 800,
    "textvqa": 300,
    "ocrvqa": 200,
    "chartqa": 200,
    "docvqa": 100,
}
# Held-out rows per family at scale 1, in the same units; about 200 eval items in all.
EVAL_COUNTS: dict[str, int] = {
    "laion": 15,
    "cc3m": 15,
    "cc12m": 10,
    "sbu": 10,
    "llava": 50,
    "textvqa": 30,
    "ocrvqa": 8,
    "chartqa": 30,
    "docvqa": 10,
}
# family → (row, fault, what goes wrong); see the module docstring.
BAD_ROWS: dict[str, tuple[int, str, str]] = {
    "laion": (4, "not_an_image", "URL serves an HTML page under a .jpg name: image decoding fails"),
    "cc3m": (3, "missing", "URL returns 404: the image was never written"),
    "cc12m": (2, "empty_caption", "caption is empty"),
    "sbu": (5, "ftp_scheme", "URL has an ftp:// scheme"),
    "llava": (9, "missing", "image file missing under the image root"),
    "ocrvqa": (6, "missing", "image never downloaded: no local file and imageURL returns 404"),
}
SPLIT_ROOTS = {"train": "", "eval": "eval", "bench": "benchmarks"}
SUMMARY_FILE = "demo_corpus.json"
EVAL_FILE = "eval/eval.json"
TOKENIZER_FILE = "tokenizer_corpus.txt"
SHORT_ANSWER = "Answer the question using a single word or phrase."
SIGN_QUESTIONS = ("what does the sign say?", "what word is written on the sign?", "what is written here?")
HTML_PAGE = b"<!doctype html><html><body>Not an image</body></html>\n"


@dataclass
class _Split:
    """Where one split (train or eval) is written, and what it has written so far."""

    out: Path
    base_url: str
    seed: int
    name: str
    train_hashes: set[str]
    files: dict[str, list[str]] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)
    bad_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    images: int = 0

    @property
    def root(self) -> Path:
        return self.out / SPLIT_ROOTS[self.name]

    def rng(self, family: str) -> random.Random:
        # String seeds hash with SHA-512 inside `random`, so they are stable across processes (unlike hash()).
        return random.Random(f"tinymix-demo:{self.seed}:{self.name}:{family}")

    def rel(self, path: str) -> str:
        """A split-relative path as a path relative to `out`."""
        return (self.root / path).relative_to(self.out).as_posix()

    def url(self, path: str) -> str:
        return f"{self.base_url}/{self.rel(path)}"

    def file(self, family: str, path: str) -> Path:
        """Register a native file of `family` and return where to write it."""
        self.files.setdefault(family, []).append(self.rel(path))
        full = self.root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        return full

    def fault(self, family: str, row: int, n: int) -> str | None:
        """The fault planted in this row, if any (training split only)."""
        if self.name != "train" or family not in BAD_ROWS:
            return None
        at, kind, _ = BAD_ROWS[family]
        return kind if row == min(at, n - 1) else None

    def report(self, family: str, row: int, file: str, ref: str) -> None:
        self.bad_rows.setdefault(family, []).append(
            {"row": row, "file": self.rel(file), "ref": ref, "problem": BAD_ROWS[family][2]}
        )

    def say(self, *texts: str) -> None:
        """Add training text to the tokenizer corpus (placeholder removed, one line each)."""
        if self.name == "train":
            for t in texts:
                line = " ".join(t.replace("<image>", " ").split())
                if line:
                    self.text.append(line)

    def image(self, path: str, make: Callable[[], tuple[Image.Image, T]], fault: str | None = None) -> T:
        """Draw with `make` and write the image to `path`; eval images are redrawn until unlike every training one."""
        for _ in range(1000):
            img, info = make()
            data = formats.encode_image(img, Path(path).suffix)
            digest = hashlib.sha256(data).hexdigest()
            if self.name == "train" or digest not in self.train_hashes:
                break
        else:
            raise AssertionError(f"could not draw an eval image unlike the training images for {path}")
        if fault == "missing":
            return info
        if fault == "not_an_image":
            data = HTML_PAGE
        full = self.root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(data)
        self.images += 1
        if self.name == "train":
            self.train_hashes.add(digest)
        return info


def _scene(rng: random.Random, transparent: bool = False) -> tuple[Image.Image, scenes.Scene]:
    scene = scenes.random_scene(rng, transparent)
    return scenes.render_scene(scene), scene


@dataclass(frozen=True)
class _UrlRow:
    url: str
    caption: str
    scene: scenes.Scene


def _url_family(sp: _Split, family: str, path: str, n: int) -> tuple[list[_UrlRow], list[EvalItem]]:
    """Scenes with captions behind URLs, the part LAION, CC3M, CC12M and SBU share; `path` is the native file."""
    rng = sp.rng(family)
    rows, items = [], []
    for i in range(n):
        fault = sp.fault(family, i, n)
        transparent = family == "laion" and i % 12 == 11
        image = f"images/{family}/{i:06d}.{'png' if transparent else 'jpg'}"
        scene = sp.image(image, partial(_scene, rng, transparent), fault)
        text = "" if fault == "empty_caption" else scenes.caption(scene, family)
        url = sp.url(image)
        if fault == "ftp_scheme":
            url = "ftp://" + url.split("://", 1)[1]
        if fault:
            sp.report(family, i, path, url)
        rows.append(_UrlRow(url, text, scene))
        sp.say(text)
        items.append(EvalItem(f"{family}/{i:06d}", family, "caption", image, "", text))
    return rows, items


def _laion(sp: _Split, n: int) -> list[EvalItem]:
    path = "laion/part-00000.parquet"
    rows, items = _url_family(sp, "laion", path, n)
    rng = sp.rng("laion-meta")
    table = [
        {
            "SAMPLE_ID": 1_000_000 + 7 * i + rng.randrange(7),
            "URL": row.url,
            "TEXT": row.caption,
            "HEIGHT": row.scene.height,
            "WIDTH": row.scene.width,
            "LICENSE": rng.choice(["?", "?", "?", "https://creativecommons.org/licenses/by/2.0/"]),
            "NSFW": rng.choice(["UNLIKELY"] * 9 + ["UNSURE"]),
            "similarity": round(rng.uniform(0.28, 0.45), 6),
            "punsafe": round(rng.uniform(0.0, 0.1), 6),
        }
        for i, row in enumerate(rows)
    ]
    formats.write_laion_parquet(sp.file("laion", path), table)
    return items


def _cc3m(sp: _Split, n: int) -> list[EvalItem]:
    path = "cc3m/Train_GCC-training.tsv" if sp.name == "train" else "cc3m/Validation_GCC-1.1.0-Validation.tsv"
    rows, items = _url_family(sp, "cc3m", path, n)
    formats.write_cc3m_tsv(sp.file("cc3m", path), [(r.caption, r.url) for r in rows])
    return items


def _cc12m(sp: _Split, n: int) -> list[EvalItem]:
    path = "cc12m/cc12m.tsv"
    rows, items = _url_family(sp, "cc12m", path, n)
    formats.write_cc12m_tsv(sp.file("cc12m", path), [(r.url, r.caption) for r in rows])
    return items


def _sbu(sp: _Split, n: int) -> list[EvalItem]:
    path = "sbu/sbu-captions-all.json"
    rows, items = _url_family(sp, "sbu", path, n)
    rng = sp.rng("sbu-users")
    users = [f"{rng.randrange(10**7, 10**8)}@N{rng.randrange(10):02d}" for _ in rows]
    formats.write_sbu_json(sp.file("sbu", path), [r.url for r in rows], users, [r.caption for r in rows])
    return items


def _ten_answers(rng: random.Random, answer: str) -> list[str]:
    """Ten annotator answers: at least eight exact, the rest case or article variants, in random order."""
    variants = [answer.upper(), f"the {answer}", answer.capitalize()]
    answers = [answer] * 8 + [rng.choice([answer, *variants]) for _ in range(2)]
    rng.shuffle(answers)
    return answers


def _textvqa(sp: _Split, n: int) -> list[EvalItem]:
    rng = sp.rng("textvqa")
    rows: list[dict[str, Any]] = []
    items = []
    while len(rows) < n:
        image_id = f"{rng.getrandbits(64):016x}"
        path = f"textvqa/train_images/{image_id}.jpg"  # validation images live in train_images too, as in TextVQA
        sign = sp.image(path, partial(scenes.render_sign, rng))
        word = sign.word.lower()
        qa = [(rng.choice(SIGN_QUESTIONS), word)]
        if rng.random() < 0.5:
            qa.append(("what colour is the sign?", sign.colour))
        for question, answer in qa[: n - len(rows)]:
            answers = _ten_answers(rng, answer)
            rows.append(
                {
                    "question": question,
                    "image_id": image_id,
                    "image_classes": rng.sample(["Sign", "Street sign", "Billboard", "Poster"], 2),
                    "flickr_original_url": sp.url(path),
                    "flickr_300k_url": sp.url(path),
                    "image_width": sign.width,
                    "image_height": sign.height,
                    "answers": answers,
                    "question_tokens": question.rstrip("?").split(),
                    "question_id": 30000 + len(rows),
                    "set_name": "train" if sp.name == "train" else "val",
                }
            )
            sp.say(question, *answers)
            items.append(EvalItem(f"textvqa/{rows[-1]['question_id']}", "textvqa", "ocr", path, question, answer))
    name = "TextVQA_0.5.1_train.json" if sp.name == "train" else "TextVQA_0.5.1_val.json"
    formats.write_textvqa_json(sp.file("textvqa", f"textvqa/{name}"), rows[0]["set_name"], rows)
    return items


def _book_qa(rng: random.Random, book: scenes.Book) -> list[tuple[str, str]]:
    other = rng.choice([g for g in scenes.GENRES if g != book.genre])
    related = rng.choice([book.genre, other])
    return [
        ("Who wrote this book?", book.author),
        ("What is the title of this book?", book.title),
        ("What is the genre of this book?", book.genre),
        (f"Is this book related to {related}?", "Yes" if related == book.genre else "No"),
    ]


def _ocrvqa(sp: _Split, n: int) -> list[EvalItem]:
    rng = sp.rng("ocrvqa")
    keys = [f"{k:010d}" for k in rng.sample(range(10**8, 10**10), n)]
    books: dict[str, dict[str, Any]] = {}
    items = []
    for i, key in enumerate(keys):
        fault = sp.fault("ocrvqa", i, n)
        path = f"ocrvqa/images/{key}{'.png' if i % 20 == 19 else '.jpg'}"
        book = sp.image(path, partial(scenes.render_cover, rng), fault)
        qa = _book_qa(rng, book)
        split = (1, 1, 1, 1, 1, 1, 1, 1, 2, 3)[i % 10] if sp.name == "train" else 3
        books[key] = {
            "imageURL": sp.url(path),
            "questions": [q for q, _ in qa],
            "answers": [a for _, a in qa],
            "title": book.title,
            "authorName": book.author,
            "genre": book.genre,
            "split": split,
        }
        if fault:
            sp.report("ocrvqa", i, "ocrvqa/dataset.json", books[key]["imageURL"])
        for j, (q, a) in enumerate(qa):
            sp.say(q, a)
            items.append(EvalItem(f"ocrvqa/{key}/{j}", "ocrvqa", "ocr", path, q, a))
    formats.write_ocrvqa_json(sp.file("ocrvqa", "ocrvqa/dataset.json"), books)
    return items


def _chart_qa(rng: random.Random, chart: scenes.Chart) -> tuple[tuple[str, str], tuple[str, str]]:
    """One human-style and one augmented (templated) question about the chart."""
    hi = chart.labels[chart.values.index(max(chart.values))]
    lo = chart.labels[chart.values.index(min(chart.values))]
    human = rng.choice(
        [
            ("Which category has the highest value?", hi),
            ("Which category has the lowest value?", lo),
            ("How many bars are there in the chart?", str(len(chart.values))),
        ]
    )
    i = rng.randrange(len(chart.labels))
    augmented = rng.choice(
        [
            (f"What is the value of {chart.labels[i]}?", str(chart.values[i])),
            (f"What is the value of the {chart.colours[i]} bar?", str(chart.values[i])),
        ]
    )
    return human, augmented


def _chartqa(sp: _Split, n: int) -> list[EvalItem]:
    rng = sp.rng("chartqa")
    split = "train" if sp.name == "train" else "val"
    numbers = rng.sample(range(1000, 99999), math.ceil(n / 2))
    human: list[dict[str, str]] = []
    augmented: list[dict[str, str]] = []
    items = []
    for i, number in enumerate(numbers):
        imgname = f"two_col_{number}.png" if i % 2 == 0 else f"{number}.png"
        path = f"chartqa/{split}/png/{imgname}"
        chart = sp.image(path, partial(scenes.render_chart, rng, i % 3 == 2))
        for rows, (q, a) in zip((human, augmented), _chart_qa(rng, chart), strict=True):
            if len(human) + len(augmented) < n:
                rows.append({"imgname": imgname, "query": q, "label": a})
                sp.say(q, a)
                items.append(EvalItem(f"chartqa/{imgname}/{len(items)}", "chartqa", "vqa", path, q, a))
    for kind, rows in (("human", human), ("augmented", augmented)):
        formats.write_chartqa_json(sp.file("chartqa", f"chartqa/{split}/{split}_{kind}.json"), rows)
    return items


def _docvqa(sp: _Split, n: int) -> list[EvalItem]:
    rng = sp.rng("docvqa")
    split = "train" if sp.name == "train" else "val"
    rows: list[dict[str, Any]] = []
    items = []
    while len(rows) < n:
        ucsf = "".join(rng.choice("bcdfghjklmnpqrstvwxyz") for _ in range(4)) + f"{rng.randrange(10000):04d}"
        image = f"documents/{ucsf}_1.png"
        path = f"docvqa/{split}/{image}"
        doc = sp.image(path, partial(scenes.render_document, rng))
        doc_id = 1000 + len(rows)
        qa = [("What is the title of the document?", doc.title), ("Who signed the document?", doc.signer)]
        for (q, a), qtype in list(zip(qa, ["layout", "handwritten"], strict=True))[: n - len(rows)]:
            rows.append(
                {
                    "questionId": 50000 + len(rows),
                    "question": q,
                    "question_types": [qtype],
                    "image": image,
                    "docId": doc_id,
                    "ucsf_document_id": ucsf,
                    "ucsf_document_page_no": "1",
                    "answers": [a],
                    "data_split": split,
                }
            )
            sp.say(q, a)
            items.append(EvalItem(f"docvqa/{rows[-1]['questionId']}", "docvqa", "ocr", path, q, a))
    formats.write_docvqa_json(sp.file("docvqa", f"docvqa/{split}/{split}_v1.0.json"), split, rows)
    return items


# LLaVA-1.5 mix665k's kinds of rows and their shares; the eval split asks single short-answer questions only.
LLAVA_MIX: dict[str, tuple[tuple[str, float], ...]] = {
    "train": (
        ("coco_chat", 0.35),
        ("coco_detail", 0.05),
        ("gqa", 0.25),
        ("ocr_vqa", 0.08),
        ("textvqa", 0.08),
        ("vg_grounding", 0.09),
        ("text_only", 0.10),
    ),
    "eval": (("gqa", 1.0),),
}
_Made = tuple[str, list[tuple[str, str]]]  # (image path under the image root, [(question, answer)])
# POPE-style questions per "coco_chat" conversation (half yes, half no), beside one or two other scene questions.
OBJECT_QUESTIONS = 4
DETAIL_PROMPTS = ("Describe the image in detail.", "What do you see in this picture?", "Explain the image.")


def _object_question(rng: random.Random, scene: scenes.Scene) -> tuple[str, str]:
    """A POPE-style "Is there a <colour> <shape> in the image?", answered yes or no equally often.

    Half the no's ask the scene's swapped bindings where it has any (the hard negatives), the rest any absent object.
    """
    if rng.random() < 0.5:
        return scenes.is_there(rng.choice(scenes.present_objects(scene))), "yes"
    swapped = scenes.swapped_objects(scene)
    pool = swapped if swapped and rng.random() < 0.5 else scenes.absent_objects(scene)
    return scenes.is_there(rng.choice(pool)), "no"


def _object_questions(rng: random.Random, scene: scenes.Scene, n: int) -> list[tuple[str, str]]:
    """Up to `n` POPE-style questions about one scene, as many "yes" as "no", in random order.

    Within an image the answer cannot come from a prior: the same kind of question is answered both ways, so the
    loss falls only by looking. The first no is a swapped binding where the scene has one (the hard negative).
    """
    present = scenes.present_objects(scene)
    k = min(n // 2, len(present))
    swapped = scenes.swapped_objects(scene)
    rng.shuffle(swapped)
    rest = [o for o in scenes.absent_objects(scene) if o not in swapped[:1]]
    absent = swapped[:1] + rng.sample(rest, k)
    qa = [(scenes.is_there(o), "yes") for o in rng.sample(present, k)]
    qa += [(scenes.is_there(o), "no") for o in absent[:k]]
    rng.shuffle(qa)
    return qa


def _llava_coco_chat(sp: _Split, rng: random.Random, num: int, fault: str | None) -> _Made:
    path = f"coco/train2017/{num:012d}.jpg"
    scene = sp.image(f"llava/{path}", partial(_scene, rng), fault)
    questions = scenes.scene_questions(scene)
    qa = rng.sample(questions, min(len(questions), rng.randint(1, 2)))
    for turn in _object_questions(rng, scene, OBJECT_QUESTIONS):
        qa.insert(rng.randint(0, len(qa)), turn)
    return path, qa


def _llava_coco_detail(sp: _Split, rng: random.Random, num: int, fault: str | None) -> _Made:
    path = f"coco/train2017/{num:012d}.jpg"
    scene = sp.image(f"llava/{path}", partial(_scene, rng), fault)
    return path, [(rng.choice(DETAIL_PROMPTS), scenes.describe(scene))]


def _llava_gqa(sp: _Split, rng: random.Random, num: int, fault: str | None) -> _Made:
    path = f"gqa/images/{2_300_000 + num}.jpg"
    scene = sp.image(f"llava/{path}", partial(_scene, rng), fault)
    q, a = _object_question(rng, scene) if rng.random() < 0.5 else rng.choice(scenes.scene_questions(scene))
    return path, [(f"{q}\n{SHORT_ANSWER}", a)]


def _llava_ocr_vqa(sp: _Split, rng: random.Random, num: int, fault: str | None) -> _Made:
    path = f"ocr_vqa/images/{num:010d}.jpg"
    book = sp.image(f"llava/{path}", partial(scenes.render_cover, rng), fault)
    qa = _book_qa(rng, book)
    return path, [(f"{qa[0][0]}\n{SHORT_ANSWER}", qa[0][1]), *qa[1:]]


def _llava_textvqa(sp: _Split, rng: random.Random, num: int, fault: str | None) -> _Made:
    path = f"textvqa/train_images/{num * 0x9E3779B97F4A7C15 % 2**64:016x}.jpg"  # spread like a hash
    sign = sp.image(f"llava/{path}", partial(scenes.render_sign, rng), fault)
    return path, [(f"What does the sign say?\n{SHORT_ANSWER}", sign.word.lower())]


def _llava_vg_grounding(sp: _Split, rng: random.Random, num: int, fault: str | None) -> _Made:
    path = f"vg/VG_100K/{num}.jpg"
    scene = sp.image(f"llava/{path}", partial(_scene, rng), fault)
    qa = []
    for shape in rng.sample(scene.shapes, len(scene.shapes)):
        box = scenes.grid_box(scene, shape)
        if rng.random() < 0.7:
            qa.append((f"[refer] where is the {shape.colour} {shape.kind}?", box))
        else:
            qa.append((f"[identify] what is in {box}?", f"{shape.colour} {shape.kind}"))
    return path, qa


LLAVA_KINDS: dict[str, Callable[[_Split, random.Random, int, str | None], _Made]] = {
    "coco_chat": _llava_coco_chat,
    "coco_detail": _llava_coco_detail,
    "gqa": _llava_gqa,
    "ocr_vqa": _llava_ocr_vqa,
    "textvqa": _llava_textvqa,
    "vg_grounding": _llava_vg_grounding,
}


def _llava(sp: _Split, n: int) -> list[EvalItem]:
    rng = sp.rng("llava")
    mix = LLAVA_MIX[sp.name]
    kinds = [kind for kind, share in mix for _ in range(max(1, round(n * share)))][:n]
    kinds += [mix[0][0]] * (n - len(kinds))
    rng.shuffle(kinds)
    bad = min(BAD_ROWS["llava"][0], n - 1)
    if sp.name == "train":
        kinds[bad] = "coco_chat"  # the planted missing image needs a row that has an image
    nums = rng.sample(range(1, 600_000), n)
    rows: list[dict[str, Any]] = []
    items = []
    for i, (kind, num) in enumerate(zip(kinds, nums, strict=True)):
        fault = sp.fault("llava", i, n)
        if kind == "text_only":
            image, qa = None, [scenes.text_question(rng) for _ in range(rng.randint(1, 2))]
        else:
            image, qa = LLAVA_KINDS[kind](sp, rng, num, fault)
        first = qa[0][0]
        if image is not None:
            # Most rows open with the placeholder; every fourth image row ends its first turn with it instead.
            first = f"{first}\n<image>" if i % 4 == 3 else f"<image>\n{first}"
        turns = [(first, qa[0][1]), *qa[1:]]
        conversations = [t for q, a in turns for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
        row_id = Path(image).stem if image else "".join(rng.choices("abcdefghijkLMNOPQRST0123456789", k=7)) + "_0"
        rows.append({"id": row_id, **({"image": image} if image else {}), "conversations": conversations})
        if fault:
            sp.report("llava", i, "llava/llava_v1_5_mix665k.json", image or "")
        sp.say(*(t["value"] for t in conversations))
        if image is not None:
            question = first.replace("<image>", "").strip()
            items.append(EvalItem(f"llava/{row_id}", "llava", "vqa", f"llava/{image}", question, qa[0][1]))
    formats.write_llava_json(sp.file("llava", "llava/llava_v1_5_mix665k.json"), rows)
    return items


FAMILIES: dict[str, Callable[[_Split, int], list[EvalItem]]] = {
    "laion": _laion,
    "cc3m": _cc3m,
    "cc12m": _cc12m,
    "sbu": _sbu,
    "llava": _llava,
    "textvqa": _textvqa,
    "ocrvqa": _ocrvqa,
    "chartqa": _chartqa,
    "docvqa": _docvqa,
}


def write_demo_corpus(out: str | Path, base_url: str, seed: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """Write the demo corpus under `out` and return its summary (also saved as `out/demo_corpus.json`).

    `base_url` is where `out` will be served (e.g. by `shards.serve.serve_folder(out)`); the URL families and
    OCR-VQA's imageURL point under it. Same `seed`, `base_url` and `scale` give byte-identical files. `scale`
    multiplies every row count of `COUNTS` and `EVAL_COUNTS` (each at least 1).
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    scheme = urlsplit(base_url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_url = base_url.rstrip("/")
    train = _Split(out, base_url, seed, "train", set())
    held_out = _Split(out, base_url, seed, "eval", train.train_hashes)
    counts = {f: max(1, round(c * scale)) for f, c in COUNTS.items()}
    eval_counts = {f: max(1, round(c * scale)) for f, c in EVAL_COUNTS.items()}
    for family, build in FAMILIES.items():
        build(train, counts[family])
    eval_items = [item for family, build in FAMILIES.items() for item in build(held_out, eval_counts[family])]
    formats.write_json(held_out.file("eval", "eval.json"), [asdict(item) for item in eval_items])
    bench = _Split(out, base_url, seed, "bench", train.train_hashes)
    pope = benchmarks.write_pope(bench, max(1, round(benchmarks.POPE_IMAGES * scale)))
    vqav2 = benchmarks.write_vqav2(bench, max(1, round(benchmarks.VQAV2_IMAGES * scale)))
    (out / TOKENIZER_FILE).write_text("".join(line + "\n" for line in train.text), encoding="utf-8")
    summary = {
        "seed": seed,
        "scale": scale,
        "base_url": base_url,
        "counts": counts,
        "files": train.files,
        "image_roots": _image_roots(train),
        "images": train.images,
        "eval": {
            "file": EVAL_FILE,
            "items": _count_by(eval_items),
            "counts": eval_counts,
            "files": {k: v for k, v in held_out.files.items() if k != "eval"},
            "image_roots": _image_roots(held_out),
            "images": held_out.images,
        },
        "benchmarks": {
            "root": SPLIT_ROOTS["bench"],
            "files": bench.files,
            "questions": {**{f"pope_{k}": v for k, v in pope.items()}, "vqav2": vqav2},
            "images": bench.images,
        },
        "tokenizer_corpus": TOKENIZER_FILE,
        "bad_rows": train.bad_rows,
    }
    formats.write_json(out / SUMMARY_FILE, summary)
    return summary


def _image_roots(sp: _Split) -> dict[str, str]:
    """Each local-image family's `image_root`, joined as in DESIGN.md's table.

    LLaVA and DocVQA join `image`, TextVQA `train_images/{image_id}.jpg`, OCR-VQA `{key}{ext}`, ChartQA `png/{imgname}`.
    """
    split = "train" if sp.name == "train" else "val"
    return {
        "llava": sp.rel("llava"),
        "textvqa": sp.rel("textvqa"),
        "ocrvqa": sp.rel("ocrvqa/images"),
        "chartqa": sp.rel(f"chartqa/{split}"),
        "docvqa": sp.rel(f"docvqa/{split}"),
    }


def _count_by(items: list[EvalItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.source] = counts.get(item.source, 0) + 1
    return counts
