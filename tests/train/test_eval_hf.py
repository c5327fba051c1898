"""`train eval` on hf exports (`train launch`'s default): 🤗-native Llava and the remote-code bundle, loaded with
AutoModelForImageTextToText, answer in batches exactly as 🤗 `generate` answers one question at a time."""

from __future__ import annotations

import json

import pytest
import torch
from test_eval_run import data_root  # noqa: F401  (module fixture: the native-layout benchmarks)
from test_model_fixtures import LLMS, model_config
from typer.testing import CliRunner

from mixer.evals import get_benchmark, read_items
from mixer.tokenizer import load_tokenizer
from train.cli import app
from train.evals import load_for_eval
from train.evals.engine import generate
from train.evals.model import from_vlm
from train.model import build_vlm
from train.model.export import load_export
from train.model.hf_export import BUNDLE, NATIVE, write_export

SIZE = 32


@pytest.fixture(scope="module", params=[("mlp2x_gelu", NATIVE), ("resampler", BUNDLE)])
def hf_export(request, tiny_tokenizer, tmp_path_factory):
    connector, form = request.param
    tok = load_tokenizer(str(tiny_tokenizer))
    cfg = model_config("llama", connector)
    cfg.llm.config = {**LLMS["llama"], "max_position_embeddings": 512}
    torch.manual_seed(0)
    vlm = build_vlm(cfg, tok, SIZE).eval()
    out = tmp_path_factory.mktemp("run") / "export"
    info = write_export(vlm, tok, out, image_size=SIZE, template="llava_v1", mean_std=([0.5] * 3, [0.5] * 3))
    assert info.form == form
    return out


def test_batched_answers_equal_hf_generate_one_at_a_time(hf_export, data_root):  # noqa: F811
    model = load_for_eval(hf_export)
    assert model.hf and model.card()["form"] == "hf" and model.template == "llava_v1"
    items = read_items(get_benchmark("gqa"), data_root) + read_items(get_benchmark("mmbench"), data_root)
    prompts = [model.prompt_ids(i.text) for i in items]
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded
    pixels = torch.stack([model.pixels(i.image) for i in items])
    batched = generate(model, prompts, pixels, max_new_tokens=6)
    eos = model.eos_id
    for k, prompt in enumerate(prompts):  # reference: 🤗 generate, one unpadded question at a time
        ids = torch.tensor([prompt])
        out = model.vlm.generate(input_ids=ids, pixel_values=pixels[k : k + 1], max_new_tokens=6, do_sample=False)
        alone = out[0, ids.shape[1] :].tolist()
        assert batched[k] == (alone[: alone.index(eos)] if eos in alone else alone)


def test_held_out_path_takes_what_load_export_returns(hf_export, data_root):  # noqa: F811
    vlm, tok = load_export(hf_export)  # the demo's path: an HFExportVLM
    model = from_vlm(vlm, tok, "llava_v1", SIZE, ((0.5,) * 3, (0.5,) * 3))
    item = read_items(get_benchmark("gqa"), data_root)[0]
    ids = model.prompt_ids(item.text)
    got = generate(model, [ids], model.pixels(item.image)[None], 5)[0]
    want = vlm.generate(model.pixels(item.image)[None], torch.tensor([ids]), 5)[0].tolist()
    assert got == (want[: want.index(tok.eos_token_id)] if tok.eos_token_id in want else want)


def test_train_eval_and_score_on_an_hf_export(hf_export, data_root, tmp_path):  # noqa: F811
    runner = CliRunner()
    out = tmp_path / "eval"
    args = ["eval", str(hf_export.parent), "--benchmarks", "pope", "--data-root", str(data_root), "--out", str(out)]
    result = runner.invoke(app, [*args, "--likelihood", "--batch", "4"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{") :])
    card = json.loads((out / "card.json").read_text())
    assert card["model"]["form"] == "hf" and card["benchmarks"]["pope"]["mode"] == "likelihood"
    answers = str(out / "pope" / "answers.jsonl")
    scored = runner.invoke(
        app, ["score", "--benchmark", "pope", "--data-root", str(data_root), "--predictions", answers, "--json"]
    )
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output) == printed["pope"]
