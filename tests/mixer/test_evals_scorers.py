"""Each benchmark's scorer on a small fixture in its native layout, with an answers file whose scores are worked out
by hand in the comments (the normalisation cases included), read back through `score_answers` as `train score` does.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mixer.evals import EvalOptions, get_benchmark, read_items, score_answers


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _answers(tmp_path: Path, answers: dict) -> Path:
    return _jsonl(tmp_path / "answers.jsonl", [{"question_id": q, "prompt": "", "text": t} for q, t in answers.items()])


def _score(name: str, root: Path, preds: Path, opts: EvalOptions | None = None) -> dict:
    return score_answers(get_benchmark(name), root, preds, opts)


def _ten(counts: dict[str, int]) -> list[dict]:
    """Ten human answers in the VQA annotation form, `counts` of each."""
    answers = [a for a, n in counts.items() for _ in range(n)]
    assert len(answers) == 10
    return [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)]


def test_vqav2(tmp_path):
    root = tmp_path / "data" / "vqav2"
    rows = [  # (question_id, answers, answer_type)
        (1, {"2": 2, "3": 8}, "number"),
        (2, {"cat": 10}, "other"),
        (3, {"don't": 3, "no": 7}, "other"),
        (4, {"yes": 10}, "yes/no"),
        (5, {"no": 10}, "yes/no"),
    ]
    questions = [{"question_id": q, "image_id": 100 + q, "question": f"q{q}?"} for q, _, _ in rows]
    anns = [
        {
            "question_id": q,
            "image_id": 100 + q,
            "answers": _ten(c),
            "answer_type": t,
            "question_type": "what",
            "multiple_choice_answer": "",
        }
        for q, c, t in rows
    ]
    _json(root / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": questions})
    _json(root / "v2_mscoco_val2014_annotations.json", {"annotations": anns})
    preds = _jsonl(tmp_path / "a.jsonl", [
        {"question_id": 1, "text": "two"},      # "2": 2 of 10 humans → (2·1/3 + 8·2/3) / 10 = 0.6
        {"question_id": 2, "text": "the cat"},  # "cat" → 1
        {"question_id": 3, "text": "dont"},     # "don't": 3 of 10 → (3·2/3 + 7·1) / 10 = 0.9
        {"question_id": 4, "text": "Yes."},     # "yes" → 1
    ])  # fmt: skip     # question 5 unanswered → 0
    s = _score("vqav2", tmp_path / "data", preds)
    assert s["accuracy"] == pytest.approx(100 * (0.6 + 1 + 0.9 + 1 + 0) / 5)
    assert s["per_answer_type"] == pytest.approx({"number": 60.0, "other": 95.0, "yes/no": 50.0})
    assert (s["n"], s["missing"]) == (5, 1)
    item = read_items(get_benchmark("vqav2"), tmp_path / "data")[0]
    assert item.image == root / "val2014" / "COCO_val2014_000000000101.jpg"


def test_gqa(tmp_path):
    root = tmp_path / "gqa"
    qs = {"a1": ("yes", "n1"), "a2": ("cat", "n2"), "a3": ("left", "n3")}
    _json(
        root / "testdev_balanced_questions.json",
        {k: {"imageId": i, "question": "?", "answer": a} for k, (a, i) in qs.items()},
    )
    # "Yes." → "yes" right; "the cat" ≠ "cat" (GQA keeps articles) wrong; "Left" → "left" right → 2/3
    s = _score("gqa", tmp_path, _answers(tmp_path, {"a1": "Yes.", "a2": "the cat", "a3": "Left"}))
    assert s["accuracy"] == pytest.approx(200 / 3)


def test_textvqa_with_and_without_ocr_tokens(tmp_path):
    root = tmp_path / "textvqa"
    data = [
        {
            "question_id": 7,
            "image_id": "img7",
            "question": "what brand?",
            "answers": ["Coca-Cola"] * 4 + ["coca cola"] * 3 + ["coke"] * 3,
        },
        {"question_id": 8, "image_id": "img8", "question": "how many?", "answers": ["2", "two"] + ["3"] * 8},
    ]
    _json(root / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": data})
    _json(root / "TextVQA_Rosetta_OCR_v0.2_val.json", {"data": [{"image_id": "img7", "ocr_tokens": ["coca", "cola"]}]})
    # q7: both sides normalised, 7 of 10 say "coca cola" → 1; q8: "2" and "two" both "2" → 2 of 10 → 0.6
    preds = _answers(tmp_path, {"7": "coca cola", "8": "2"})
    assert _score("textvqa", tmp_path, preds)["accuracy"] == pytest.approx(80.0)
    opts = EvalOptions(ocr_tokens=True)
    assert _score("textvqa", tmp_path, preds, opts)["accuracy"] == pytest.approx(80.0)
    items = read_items(get_benchmark("textvqa"), tmp_path, opts)
    assert (
        items[0].text
        == "what brand?\nReference OCR token: coca, cola\nAnswer the question using a single word or phrase."
    )
    assert items[1].text.startswith("how many?\nReference OCR token: \n")


def test_vizwiz(tmp_path):
    def answers(**c):
        return [{"answer": a, "answer_confidence": "yes"} for a, n in c.items() for _ in range(n)]

    data = [
        {
            "image": "VizWiz_val_00000000.jpg",
            "question": "what is it?",
            "answers": answers(unanswerable=6, unsuitable=4),
            "answer_type": "unanswerable",
            "answerable": 0,
        },
        {
            "image": "VizWiz_val_00000001.jpg",
            "question": "colour?",
            "answers": answers(white=2, grey=8),
            "answer_type": "other",
            "answerable": 1,
        },
    ]
    _json(tmp_path / "vizwiz" / "val.json", data)
    # "Unanswerable" → 1 (6 of 10); "White." → "white", 2 of 10 → 0.6
    preds = _answers(tmp_path, {"VizWiz_val_00000000.jpg": "Unanswerable", "VizWiz_val_00000001.jpg": "White."})
    s = _score("vizwiz", tmp_path, preds)
    assert s["accuracy"] == pytest.approx(80.0)
    assert s["per_answer_type"] == pytest.approx({"other": 60.0, "unanswerable": 100.0})
    assert "respond with 'Unanswerable'" in read_items(get_benchmark("vizwiz"), tmp_path)[0].text


def test_pope(tmp_path):
    splits = {  # (label, answer)
        "random": [("yes", "Yes, there is a cat."), ("no", "No."), ("yes", "There is not a cat."), ("no", "yes")],
        "popular": [("yes", "yes"), ("yes", "Yes"), ("no", "no")],
        "adversarial": [("no", "Yes"), ("no", "Yes")],
    }
    answers = {}
    for split, rows in splits.items():
        lines = [
            {
                "question_id": k,
                "image": f"COCO_val2014_{k:012d}.jpg",
                "text": "Is there a cat in the image?",
                "label": lab,
            }
            for k, (lab, _) in enumerate(rows)
        ]
        _jsonl(tmp_path / "pope" / f"coco_pope_{split}.json", lines)
        answers |= {f"{split}-{k}": a for k, (_, a) in enumerate(rows)}
    s = _score("pope", tmp_path, _answers(tmp_path, answers))
    # random: predicted yes,no,no,yes vs yes,no,yes,no → TP 1, FP 1, FN 1, TN 1
    assert s["random"] == pytest.approx(
        {"accuracy": 50, "precision": 50, "recall": 50, "f1": 50, "yes_ratio": 50, "n": 4}
    )
    assert s["popular"] == pytest.approx(
        {"accuracy": 100, "precision": 100, "recall": 100, "f1": 100, "yes_ratio": 200 / 3, "n": 3}
    )
    # adversarial: two false positives, no positives at all → precision 0, recall 0, F1 0
    assert s["adversarial"] == pytest.approx(
        {"accuracy": 0, "precision": 0, "recall": 0, "f1": 0, "yes_ratio": 100, "n": 2}
    )
    assert s["mean_f1"] == pytest.approx(50.0)


def test_mme_both_layouts(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"

    def task(name, image, lines, yn_layout=False):
        img_dir, txt_dir = (
            (root / name / "images", root / name / "questions_answers_YN") if yn_layout else (root / name, root / name)
        )
        img_dir.mkdir(parents=True, exist_ok=True), txt_dir.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(img_dir / image)
        (txt_dir / (Path(image).stem + ".txt")).write_text("".join(f"{q}\t{a}\n" for q, a in lines))

    task("existence", "e1.jpg", [("Is there a dog? Please answer yes or no.", "Yes"), ("Is there a cat?", "No")])
    task("existence", "e2.jpg", [("Is there a car?", "Yes"), ("Is there a bus?", "No")])
    task("artwork", "a1.jpg", [("Is it by Monet?", "Yes"), ("Is it by Dali?", "No")], yn_layout=True)
    task("code_reasoning", "c1.png", [("Does it print 3?", "Yes"), ("Does it print 4?", "No")])
    answers = {
        "existence/e1.jpg#0": "Yes",
        "existence/e1.jpg#1": "No, there is not.",  # both right
        "existence/e2.jpg#0": "yes.",
        "existence/e2.jpg#1": "Yes",  # one right
        "artwork/images/a1.jpg#0": "I think so",
        "artwork/images/a1.jpg#1": "No",  # "other", right
        "code_reasoning/c1.png#0": "Yes",
        "code_reasoning/c1.png#1": "no",
    }
    s = _score("mme", tmp_path, _answers(tmp_path, answers))
    # existence: acc 3/4 = 75, acc+ 1/2 = 50 → 125; artwork: 50 + 0; code_reasoning: 100 + 100
    assert s["subtasks"]["existence"] == pytest.approx({"acc": 75, "acc_plus": 50, "score": 125, "n": 4})
    assert s["subtasks"]["artwork"] == pytest.approx({"acc": 50, "acc_plus": 0, "score": 50, "n": 2})
    assert (s["perception"], s["cognition"]) == pytest.approx((175.0, 200.0))


def test_scienceqa_img(tmp_path):
    problems = {
        "1": {
            "question": "Which is a mammal?",
            "choices": ["frog", "whale", "shark"],
            "answer": 1,
            "hint": "",
            "image": "image.png",
            "split": "test",
        },
        "2": {
            "question": "No image here",
            "choices": ["a", "b"],
            "answer": 0,
            "hint": "",
            "image": None,
            "split": "test",
        },
        "3": {
            "question": "Which is hot?",
            "choices": ["sun", "ice"],
            "answer": 0,
            "hint": "Look.",
            "image": "image.png",
            "split": "test",
        },
        "4": {
            "question": "train",
            "choices": ["a", "b"],
            "answer": 0,
            "hint": "",
            "image": "image.png",
            "split": "train",
        },
    }
    _json(tmp_path / "scienceqa" / "problems.json", problems)
    _json(tmp_path / "scienceqa" / "pid_splits.json", {"train": ["4"], "test": ["1", "2", "3"]})
    items = read_items(get_benchmark("scienceqa"), tmp_path)
    assert [i.question_id for i in items] == ["1", "3"]  # test questions with an image only
    assert (
        items[1].text
        == "Look.\nWhich is hot?\nA. sun\nB. ice\nAnswer with the option's letter from the given choices directly."
    )
    # "The answer is B." → B (right); "B" for question 3 (answer A) wrong → 50
    s = _score("scienceqa", tmp_path, _answers(tmp_path, {"1": "The answer is B.", "3": "B"}))
    assert (s["accuracy"], s["n"]) == (50.0, 2)


def test_mmbench_circular_and_vanilla(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit\n"
    rows = [
        f"10\tWhich colour?\tnan\tred\tblue\tgreen\tnan\tB\tcolour\t{b64}\tx\ty\tnan\tdev\n",
        f"11\tWhich animal?\tA pet.\tcat\tdog\tnan\tnan\tA\tanimal\t{b64}\tx\ty\tnan\tdev\n",
    ]
    (tmp_path / "mmbench").mkdir()
    (tmp_path / "mmbench" / "mmbench_dev_20230712.tsv").write_text(header + "".join(rows))
    items = read_items(get_benchmark("mmbench"), tmp_path)
    # rotation r moves option j+r to letter j: 10 → ABC, BCA, CAB (answer B, A, C); 11 → AB, BA (answer A, B)
    assert [(i.question_id, i.answer) for i in items] == [
        ("10", "B"),
        ("1000010", "A"),
        ("2000010", "C"),
        ("11", "A"),
        ("1000011", "B"),
    ]
    assert items[1].options == {"A": "blue", "B": "green", "C": "red"}
    assert items[3].text.startswith("A pet.\nWhich animal?\nA. cat\nB. dog\n")
    assert items[0].image == buf.getvalue()
    answers = {
        "10": "B",
        "1000010": "A. blue",
        "2000010": "The answer is blue",  # all right (the last by option text)
        "11": "A",
        "1000011": "A",  # the same letter for both rotations: right once, wrong once
    }
    s = _score("mmbench", tmp_path, _answers(tmp_path, answers))
    assert (s["circular_accuracy"], s["vanilla_accuracy"]) == (50.0, 100.0)
    assert s["circular_per_category"] == {"animal": 0.0, "colour": 100.0}
    assert read_items(get_benchmark("mmbench"), tmp_path, limit=1)[-1].question_id == "2000010"  # whole rotations


def test_vsr(tmp_path):
    rows = [
        {"image": "000000000001.jpg", "caption": "The cat is on the bed.", "label": 1, "relation": "on"},
        {"image": "000000000002.jpg", "caption": "The dog is under the table.", "label": 0, "relation": "under"},
        {"image": "000000000003.jpg", "caption": "The cup is left of the plate.", "label": 1, "relation": "left of"},
    ]
    _jsonl(tmp_path / "vsr" / "zeroshot" / "test.jsonl", rows)
    # "True" right; "The statement is false." right; "no" (label true) wrong → 2/3
    s = _score("vsr", tmp_path, _answers(tmp_path, {"1": "True", "2": "The statement is false.", "3": "no"}))
    assert s["accuracy"] == pytest.approx(200 / 3)
    assert read_items(get_benchmark("vsr"), tmp_path)[0].text.endswith("true or false? The cat is on the bed.")


def test_iconqa(tmp_path):
    base = tmp_path / "iconqa" / "test"
    _json(
        base / "choose_txt" / "100" / "data.json",
        {"question": "How many?", "choices": ["3", "4"], "answer": 1, "ques_type": "choose_txt"},
    )
    _json(
        base / "fill_in_blank" / "200" / "data.json",
        {"question": "How many dots?", "answer": "5", "ques_type": "fill_in_blank"},
    )
    _json(
        base / "fill_in_blank" / "201" / "data.json",
        {"question": "How many stars?", "answer": "7", "ques_type": "fill_in_blank"},
    )
    # "B" right; "five" → "5" right; "8" wrong
    s = _score(
        "iconqa",
        tmp_path,
        _answers(tmp_path, {"choose_txt/100": "B", "fill_in_blank/200": "five", "fill_in_blank/201": "8"}),
    )
    assert s["accuracy"] == pytest.approx(200 / 3)
    assert s["per_type"] == {"choose_txt": 100.0, "fill_in_blank": 50.0}


def test_hateful_memes_auroc_and_accuracy(tmp_path):
    rows = [
        {"id": k, "img": f"img/{k}.png", "label": lab, "text": "some words"}
        for k, lab in zip((1, 2, 3, 4), (1, 0, 1, 0), strict=True)
    ]
    _jsonl(tmp_path / "hateful_memes" / "dev_seen.jsonl", rows)
    scored = _jsonl(
        tmp_path / "s.jsonl",
        [{"question_id": k, "text": "", "score": p} for k, p in zip((1, 2, 3, 4), (0.9, 0.4, 0.4, 0.2), strict=True)],
    )
    # positives {0.9, 0.4} vs negatives {0.4, 0.2}: 0.9 beats both, 0.4 ties 0.4 (½) and beats 0.2 → 3.5 / 4
    # accuracy at 0.5: predicted 1,0,0,0 vs 1,0,1,0 → 3/4
    s = _score("hateful_memes", tmp_path, scored)
    assert (s["auroc"], s["accuracy"]) == (87.5, 75.0)
    # text answers count 1 / 0: scores 1,0,0,1 → pairs (1,0) win, (1,1) ½, (0,0) ½, (0,1) lose → 2 / 4
    s = _score("hateful_memes", tmp_path, _answers(tmp_path, {"1": "Yes", "2": "No", "3": "no", "4": "yes"}))
    assert (s["auroc"], s["accuracy"]) == (50.0, 50.0)
    _jsonl(tmp_path / "hateful_memes" / "dev_seen.jsonl", rows[:1])  # one class only: AUROC is undefined
    assert _score("hateful_memes", tmp_path, scored)["auroc"] is None


def test_bad_files_name_the_file_and_row(tmp_path):
    from mixer.evals import BenchmarkError

    _jsonl(
        tmp_path / "pope" / "coco_pope_random.json",
        [{"question_id": 1, "image": "x.jpg", "text": "?", "label": "maybe"}],
    )
    with pytest.raises(BenchmarkError, match=r"coco_pope_random.json:1: label must be yes or no"):
        read_items(get_benchmark("pope"), tmp_path)
    _json(tmp_path / "gqa" / "testdev_balanced_questions.json", {"q1": {"imageId": "n1", "answer": "yes"}})
    with pytest.raises(BenchmarkError, match=r"testdev_balanced_questions.json: q1: missing field 'question'"):
        read_items(get_benchmark("gqa"), tmp_path)
    _json(
        tmp_path / "gqa" / "testdev_balanced_questions.json",
        {"q1": {"imageId": "n1", "question": "?", "answer": "yes"}},
    )
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1, "text": "a"}\nnot json\n')
    with pytest.raises(BenchmarkError, match=r"bad.jsonl:2: not valid JSON"):
        score_answers(get_benchmark("gqa"), tmp_path, tmp_path / "bad.jsonl")
    (tmp_path / "MME_Benchmark_release_version").mkdir()
    with pytest.raises(BenchmarkError, match=r"MME_Benchmark_release_version: no MME subtask folders"):
        read_items(get_benchmark("mme"), tmp_path)


def test_vqav2_test_dev_has_no_score_but_an_evalai_upload(tmp_path):
    questions = [{"question_id": 5, "image_id": 9, "question": "how many?"}]
    _json(tmp_path / "vqav2" / "v2_OpenEnded_mscoco_test-dev2015_questions.json", {"questions": questions})
    opts = EvalOptions(vqav2_split="test-dev2015")
    bench = get_benchmark("vqav2")
    items = read_items(bench, tmp_path, opts)
    assert items[0].image_ref == "test2015/COCO_test2015_000000000009.jpg"
    preds = {"5": {"question_id": 5, "text": "Two."}}
    scores = bench.score(items, preds)
    assert (scores["n"], scores["missing"], "accuracy" in scores) == (1, 0, False) and "EvalAI" in scores["note"]
    assert bench.upload(items, preds) == [{"question_id": 5, "answer": "2"}]


def test_vizwiz_test_upload(tmp_path):
    _json(tmp_path / "vizwiz" / "test.json", [{"image": "VizWiz_test_00000000.jpg", "question": "what?"}])
    bench = get_benchmark("vizwiz")
    items = read_items(bench, tmp_path, EvalOptions(vizwiz_split="test"))
    assert items[0].image == tmp_path / "vizwiz" / "test" / "VizWiz_test_00000000.jpg"
    preds = {"VizWiz_test_00000000.jpg": {"text": "Unanswerable."}}
    assert bench.upload(items, preds) == [{"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"}]
