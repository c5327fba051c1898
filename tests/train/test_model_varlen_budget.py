"""Token-budget micro batches (`packing: budget`) through the model: the loader's `pack_budget` lays a micro batch's
samples in one row `[1, micro_batch × seq_len]`, a sample may straddle where a row of `seq_len` would end, and under
a varlen attention that honours only `cu_seq_lens` (the reference of test_model_varlen) each sample's logits equal
the sample alone."""

from __future__ import annotations

import pytest
import torch
from test_model_fixtures import model_config, sample, train_tokenizer
from test_model_varlen import CALLS, TOL, varlen_reference

from mixer.batch import normalize_pixels
from mixer.loader.images import mean_std
from mixer.loader.pack import Segment, pack_batch, pack_budget
from mixer.manifest.stages import StageConfig
from train.loop import budget_attention_note
from train.model import build_vlm
from train.model.vlm import register_varlen_attention

NAME = "tinymix_varlen_reference_budget"
register_varlen_attention(NAME, varlen_reference)
NORM = mean_std("clip_vision_model")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def _segments(tok, n):
    texts = [
        ("describe the image in detail.", "a small boat on a quiet lake under a grey sky", True),
        ("what colour is the bus?", "the bus is yellow", False),
        ("how many people?", "three people", True),
        ("read the sign.", "stop", False),
    ]
    out = []
    for prompt, answer, image in texts:
        ids, labels = sample(tok, prompt, answer, n if image else 0)
        out.append((Segment(ids, labels, (0,) if image else ()), image))
    return out


def _pixels(k: int) -> torch.Tensor:
    return torch.randint(0, 256, (k, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(k))


def test_a_budget_micro_batch_equals_each_sample_alone_under_varlen(tok):
    torch.manual_seed(0)
    eager = build_vlm(model_config("llama", "mlp2x_gelu", attn_implementation="eager"), tok, 32).eval()
    varlen = build_vlm(model_config("llama", "mlp2x_gelu", attn_implementation="eager"), tok, 32).eval()
    varlen.load_state_dict(eager.state_dict())
    varlen.llm.set_attn_implementation(NAME)
    n = eager.n_image_tokens(32)
    segs = _segments(tok, n)
    lengths = [len(s) for s, _ in segs]
    seq_len, rows = max(lengths) + 1, 2
    # all four in one budget of 2 rows: more than two rows of seq_len could hold without cutting a sample at the row end
    assert sum(lengths) <= rows * seq_len and lengths[0] + lengths[1] > seq_len
    pixels = _pixels(sum(im for _, im in segs))
    batch = pack_budget([s for s, _ in segs], seq_len, rows, tok.pad_token_id, pixels, NORM)
    assert batch["input_ids"].shape == (1, rows * seq_len)
    assert batch["cu_seqlens"].tolist()[:-1] == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    batch = normalize_pixels(batch)
    CALLS.clear()
    with torch.no_grad():
        logits = varlen.logits(batch)
        loss = varlen(batch).loss
    layers = varlen.llm.config.num_hidden_layers
    assert CALLS[:layers] == [{"tokens": rows * seq_len, "segments": 5}] * layers  # 4 samples + the padding
    start, k = 0, 0
    with torch.no_grad():
        for seg, image in segs:
            alone = pack_batch([[seg]], len(seg), tok.pad_token_id, pixels[k : k + image], NORM)
            want = eager.logits(normalize_pixels(alone))[0]
            torch.testing.assert_close(logits[0, start : start + len(seg)], want, atol=TOL, rtol=0)
            start, k = start + len(seg), k + image
        torch.testing.assert_close(loss, eager(batch).loss, atol=TOL, rtol=0)  # eager: the block-diagonal mask


def test_pack_budget_refuses_a_sample_over_seq_len(tok):
    seg = Segment(list(range(10)), [-100] * 10)
    with pytest.raises(ValueError, match="segment 2: 10 tokens, more than seq_len 8"):
        pack_budget([Segment([1], [-100]), seg], 8, 4, 0, torch.zeros(0, 3, 32, 32, dtype=torch.uint8), NORM)


def test_budget_packing_without_varlen_attention_is_named_at_stage_start():
    """The one-row budget micro batch under eager / SDPA works but needs a (micro_batch × seq_len)² mask: said."""
    base = {"name": "s", "mixture": {"a": 1.0}, "size": {"steps": 5}, "trains": ["connector"]}
    base |= {"optimizer": {"lr": 1e-3}, "micro_batch": 4, "global_batch": 16, "window": 16, "seq_len": 512}
    budget, rows = StageConfig(**base, packing="budget"), StageConfig(**base)
    note = budget_attention_note(budget, "sdpa")
    assert note is not None and "one row of 2048 tokens" in note and "packing: rows keeps rows of 512" in note
    assert budget_attention_note(budget, "eager") is not None
    assert budget_attention_note(budget, NAME) is None  # a registered varlen attention reads cu_seq_lens
    assert budget_attention_note(budget, "flash_attention_2") is None
    assert budget_attention_note(rows, "sdpa") is None
