"""`train eval` end to end on a tiny export: batched answers equal one-at-a-time answers, likelihood scoring equals a
padding-free reference, and `train score` on the answers `train eval` wrote gives the numbers `train eval` printed."""

from __future__ import annotations

import base64
import io
import json
import math

import pytest
import torch
from PIL import Image
from test_model_fixtures import eval_export
from typer.testing import CliRunner

from mixer.evals import EvalOptions, get_benchmark, read_items
from train.cli import app
from train.evals import EvalConfig, answer_items, load_for_eval
from train.evals.engine import answer_logprobs, generate, left_pad, positions
from train.evals.run import spellings
from train.model.vlm import image_positions

SIZE = 32


def _png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)


@pytest.fixture(scope="module")
def export(tiny_tokenizer, tmp_path_factory):
    """A random tiny VLM exported as `train launch` exports it (template and normalisation in tinymix_vlm.json)."""
    return eval_export(tiny_tokenizer, tmp_path_factory.mktemp("run") / "export", SIZE)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """GQA, POPE and MMBench in their native layouts, a few questions each."""
    root = tmp_path_factory.mktemp("benchmarks")
    colours = ["red", "blue", "green", "white"]
    gqa = {}
    for k, c in enumerate(colours):
        _png(root / "gqa" / "images" / f"n{k}.jpg", c)
        gqa[f"20{k}"] = {"imageId": f"n{k}", "question": f"what colour is picture {k}?", "answer": c}
    (root / "gqa" / "testdev_balanced_questions.json").write_text(json.dumps(gqa))
    for split in ("random", "popular", "adversarial"):
        lines = [
            {"question_id": q, "image": f"COCO_val2014_{q:012d}.jpg", "text": "Is there a cat?", "label": lab}
            for q, lab in ((1, "yes"), (2, "no"), (3, "yes"))
        ]
        (root / "pope").mkdir(exist_ok=True)
        (root / "pope" / f"coco_pope_{split}.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for q in (1, 2, 3):
        _png(root / "pope" / "val2014" / f"COCO_val2014_{q:012d}.jpg", colours[q])
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n"
    rows = [f"{i}\tWhat colour?\tnan\tred\tblue\tgreen\tnan\tA\tcolour\t{b64}\n" for i in (7, 8)]
    (root / "mmbench").mkdir()
    (root / "mmbench" / "mmbench_dev_20230712.tsv").write_text(header + "".join(rows))
    return root


def test_batched_generation_equals_one_question_at_a_time(export, data_root):
    model = load_for_eval(export)
    items = read_items(get_benchmark("gqa"), data_root) + read_items(get_benchmark("mmbench"), data_root)
    prompts = [model.prompt_ids(i.text) for i in items]
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded
    pixels = torch.stack([model.pixels(i.image) for i in items])
    batched = generate(model, prompts, pixels, max_new_tokens=6)
    for k, prompt in enumerate(prompts):  # reference: TinyVLM.generate, one unpadded row at a time
        alone = model.vlm.generate(pixels[k : k + 1], torch.tensor([prompt]), 6)[0].tolist()
        eos = model.eos_id
        assert batched[k] == (alone[: alone.index(eos)] if eos in alone else alone)


def test_likelihood_scores_equal_an_unpadded_reference(export, data_root):
    model = load_for_eval(export)
    items = read_items(get_benchmark("pope"), data_root)[:3]
    prompts, answers, pixels = [], [], []
    for i, choice in zip(items, ["Yes", "No", "Yes"], strict=True):
        p, a = model.encode(i.text, choice)
        prompts.append(p), answers.append(a), pixels.append(model.pixels(i.image))
    got = answer_logprobs(model, prompts, answers, torch.stack(pixels))
    n_img = model.n_image_tokens
    for k in range(3):
        ids = torch.tensor([prompts[k] + answers[k]])
        embeds = model.vlm.embed(ids, pixels[k][None], image_positions(ids, model.vlm.image_token_id, n_img))
        logits = model.vlm.llm(inputs_embeds=embeds).logits[0].float()
        logp = logits.log_softmax(-1)
        n = len(prompts[k])
        want = sum(logp[n - 1 + j, t].item() for j, t in enumerate(answers[k]))
        assert math.isclose(got[k].item(), want, abs_tol=1e-4)


def test_train_eval_then_train_score_agree(export, data_root, tmp_path):
    runner = CliRunner()
    out = tmp_path / "eval"
    args = ["eval", str(export.parent), "--benchmarks", "gqa,pope,mmbench", "--data-root", str(data_root)]
    result = runner.invoke(app, [*args, "--batch", "3", "--out", str(out), "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{") :])
    card = json.loads((out / "card.json").read_text())
    assert card["model"]["template"] == "llava_v1" and card["model"]["image_mode"] == "crop"
    assert set(card["benchmarks"]["pope"]["files"]) == {
        f"coco_pope_{s}.json" for s in ("random", "popular", "adversarial")
    }
    assert card["benchmarks"]["gqa"]["images"]["n"] == 4
    for name in ("gqa", "pope", "mmbench"):
        lines = [json.loads(x) for x in (out / name / "answers.jsonl").read_text().splitlines()]
        assert all(set(x) >= {"question_id", "prompt", "text"} for x in lines)
        scored = runner.invoke(
            app,
            [
                "score",
                "--benchmark",
                name,
                "--data-root",
                str(data_root),
                "--predictions",
                str(out / name / "answers.jsonl"),
                "--json",
            ],
        )
        assert scored.exit_code == 0, scored.output
        assert json.loads(scored.output) == printed[name] == json.loads((out / name / "scores.json").read_text())
    assert printed["mmbench"]["n"] == 6  # 2 questions x 3 rotations


def test_questions_only_needs_no_model(data_root, tmp_path):
    path = tmp_path / "q.jsonl"
    args = ["eval", "--benchmarks", "mmbench,gqa", "--data-root", str(data_root), "--questions-only", str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["benchmark"] for r in rows] == ["mmbench"] * 6 + ["gqa"] * 4
    assert rows[1]["options"] == {"A": "blue", "B": "green", "C": "red"} and rows[1]["question_id"] == "1000007"
    assert rows[-1] == {
        "benchmark": "gqa",
        "question_id": "203",
        "image": "images/n3.jpg",
        "text": "what colour is picture 3?\nAnswer the question using a single word or phrase.",
    }


def test_likelihood_mode_answers_with_a_choice(export, data_root):
    model = load_for_eval(export)
    items = read_items(get_benchmark("pope"), data_root, EvalOptions())
    lines = answer_items(model, items, EvalConfig(data_root, likelihood=True, batch=4))
    assert [x["question_id"] for x in lines] == [i.question_id for i in items]
    for x in lines:
        assert x["text"] in ("Yes", "No") and 0.0 <= x["score"] <= 1.0
        assert x["text"] == ("Yes" if x["logprobs"][0] >= x["logprobs"][1] else "No")


def test_unknown_benchmark_and_missing_file_exit_2(data_root, export, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["score", "--benchmark", "nope", "--data-root", str(data_root), "--predictions", "x"])
    assert bad.exit_code == 2 and "unknown benchmark 'nope'" in bad.output
    missing = runner.invoke(app, ["eval", str(export), "--benchmarks", "vqav2", "--data-root", str(tmp_path)])
    assert missing.exit_code == 2 and "v2_OpenEnded_mscoco_val2014_questions.json: not found" in missing.output
    option = runner.invoke(app, ["eval", "--benchmarks", "gqa", "--data-root", "x", "--option", "ocr=1"])
    assert option.exit_code == 2 and "--option 'ocr=1': expected KEY=VALUE with KEY one of ocr_tokens" in option.output
    no_model = runner.invoke(app, ["eval", "--benchmarks", "gqa", "--data-root", str(data_root)])
    assert no_model.exit_code == 2 and "name the model" in no_model.output


def test_held_out_evaluate_batches_like_one_at_a_time(export, data_root):
    from mixer.evalset import EvalItem
    from train.evaluate import evaluate, prompt_ids

    model = load_for_eval(export)
    images = sorted((data_root / "gqa" / "images").iterdir())
    items = [
        EvalItem(f"q{k}", "gqa", "vqa", str(p), "what colour is it?" + " really" * k, "red")
        for k, p in enumerate(images)
    ]
    got = evaluate(
        model.vlm, model.tokenizer, items, template="llava_v1", image_size=SIZE, mean_std=model.mean_std,
        max_new_tokens=5, batch=3,
    )  # fmt: skip
    for item, example in zip(items, got["examples"], strict=True):
        ids = torch.tensor([prompt_ids(model.tokenizer, "llava_v1", item, model.n_image_tokens)])
        alone = model.vlm.generate(model.pixels(item.image)[None], ids, 5)[0].tolist()
        assert example["answer"] == model.tokenizer.decode(alone, skip_special_tokens=True).strip()
    assert got["n"] == 4 and set(got["by_source"]) == {"gqa"}


def test_likelihood_counts_each_spelling_the_parser_reads_as_the_choice(export, data_root):
    """P("Yes") for a model that writes "yes" is P("Yes") + P("yes"): the rows' log-probabilities, summed in exp."""
    assert spellings("Yes") == ["Yes", "yes"] and spellings("No") == ["No", "no"]
    assert spellings("A") == ["A"] and spellings("yes") == ["yes"] and spellings("4.5") == ["4.5"]
    model = load_for_eval(export)
    item = read_items(get_benchmark("pope"), data_root, EvalOptions())[0]
    (line,) = answer_items(model, [item], EvalConfig(data_root, likelihood=True, batch=3))
    pixels = model.pixels(item.image)[None]
    each = {}
    for s in ("Yes", "yes", "No", "no"):
        prompt, answer = model.encode(item.text, s)
        each[s] = answer_logprobs(model, [prompt], [answer], pixels).item()
    expected = [
        math.log(math.exp(each["Yes"]) + math.exp(each["yes"])),
        math.log(math.exp(each["No"]) + math.exp(each["no"])),
    ]
    assert line["logprobs"] == pytest.approx(expected, abs=1e-4)
    assert line["score"] == pytest.approx(1 / (1 + math.exp(expected[1] - expected[0])), abs=1e-5)


def test_a_generation_prefill_computes_only_the_last_logits(export, data_root):
    model = load_for_eval(export)
    items = read_items(get_benchmark("gqa"), data_root)[:3]
    ids, mask = left_pad([model.prompt_ids(i.text) for i in items], model.pad_id)
    pixels = torch.stack([model.pixels(i.image) for i in items])
    full = model.forward(ids, pixels, mask, positions(mask), use_cache=False).logits
    last = model.forward(ids, pixels, mask, positions(mask), use_cache=False, logits_to_keep=1).logits
    assert full.shape[1] == ids.shape[1] and last.shape == (len(items), 1, full.shape[-1])
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)
