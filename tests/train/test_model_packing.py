"""Packed vs unpacked: samples packed into one sequence give the same per-token losses and logits as each run alone."""

from __future__ import annotations

import pytest
import torch
from test_model_fixtures import model_config, pack, sample, stack_rows, train_tokenizer

from mixer.batch import IGNORE_INDEX
from train.model import build_vlm
from train.model.vlm import resolve_attn_implementation

# fp32 on the CPU: masked positions get exactly zero attention weight, so only summation order differs.
TOL = 1e-5


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def _samples(tok, n):
    torch.manual_seed(1)
    return [
        (sample(tok, "describe the image.", "a small boat on a quiet lake", n), torch.randn(3, 32, 32)),
        (sample(tok, "what colour is the bus?", "the bus is yellow"), None),
        (sample(tok, "how many people?", "three people", n), torch.randn(3, 32, 32)),
    ]


@torch.no_grad()
def _alone(vlm, tok, n, s, image):
    batch = pack([s], [image], tok, n)
    logits = vlm.logits(batch)
    return logits[0], vlm.token_losses(logits, batch)[0]


@torch.no_grad()
def _check_segments(vlm, tok, n, samples, batch, row_of, start_of):
    logits, losses = vlm.logits(batch), vlm.per_token_loss(batch)
    for i, (s, image) in enumerate(samples):
        ref_logits, ref_losses = _alone(vlm, tok, n, s, image)
        r, a, length = row_of[i], start_of[i], len(s[0])
        torch.testing.assert_close(logits[r, a : a + length], ref_logits, atol=TOL, rtol=0)
        torch.testing.assert_close(losses[r, a : a + length], ref_losses, atol=TOL, rtol=0)
        assert ref_losses[1:].gt(0).sum() == sum(1 for t in s[1][1:] if t != IGNORE_INDEX)


@pytest.mark.parametrize(
    ("llm", "options"),
    [
        ("llama", {"attn_implementation": "eager"}),
        ("llama", {"attn_implementation": "sdpa"}),
        ("phi", {"attn_implementation": "eager"}),
        ("phi", {"attn_implementation": "sdpa", "qk_norm": True, "post_attn_norm": True}),
    ],
)
def test_packed_equals_unpacked(tok, llm, options):
    torch.manual_seed(0)
    vlm = build_vlm(model_config(llm, "mlp2x_gelu", **options), tok, 32).eval()
    n = vlm.n_image_tokens(32)
    samples = _samples(tok, n)
    lengths = [len(s[0]) for s, _ in samples]

    # All three in one row, with padding after them.
    one_row = pack([s for s, _ in samples], [im for _, im in samples], tok, n, seq_len=sum(lengths) + 5)
    starts = [0, lengths[0], lengths[0] + lengths[1]]
    _check_segments(vlm, tok, n, samples, one_row, [0, 0, 0], starts)

    # Two rows: samples 1 and 2 in row 0, sample 3 then padding in row 1.
    seq_len = lengths[0] + lengths[1]
    rows = stack_rows(
        [
            pack([samples[0][0], samples[1][0]], [samples[0][1], None], tok, n, seq_len=seq_len),
            pack([samples[2][0]], [samples[2][1]], tok, n, seq_len=seq_len),
        ]
    )
    _check_segments(vlm, tok, n, samples, rows, [0, 0, 1], [0, lengths[0], 0])

    # The batch loss is the mean over every label token of every sample.
    alone = [_alone(vlm, tok, n, s, im)[1] for s, im in samples]
    expected = torch.cat(alone).sum() / sum(sum(1 for t in s[1][1:] if t != IGNORE_INDEX) for s, _ in samples)
    torch.testing.assert_close(vlm(one_row).loss, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(vlm(rows).loss, expected, atol=TOL, rtol=0)


def test_without_the_block_mask_samples_leak(tok):
    """The comparison above can fail: with one segment id for the whole row, sample 2 sees sample 1."""
    torch.manual_seed(0)
    vlm = build_vlm(model_config("llama", "linear"), tok, 32).eval()
    n = vlm.n_image_tokens(32)
    samples = _samples(tok, n)[:2]
    batch = pack([s for s, _ in samples], [im for _, im in samples], tok, n)
    batch["segment_ids"] = torch.ones_like(batch["segment_ids"])
    start = len(samples[0][0][0])
    ref_logits, _ = _alone(vlm, tok, n, *samples[1])
    leaked = vlm.logits(batch)[0, start:]
    assert (leaked - ref_logits).abs().max() > 1e-3


def test_image_features_reach_the_logits(tok):
    torch.manual_seed(0)
    vlm = build_vlm(model_config("llama", "linear"), tok, 32).eval()
    n = vlm.n_image_tokens(32)
    s, image = _samples(tok, n)[0]
    a = vlm.logits(pack([s], [image], tok, n))
    b = vlm.logits(pack([s], [image + 1.0], tok, n))
    assert (a - b).abs().max() > 1e-4


def test_mismatched_image_positions_are_rejected(tok):
    torch.manual_seed(0)
    vlm = build_vlm(model_config("llama", "linear"), tok, 32).eval()
    n = vlm.n_image_tokens(32)
    s, image = _samples(tok, n)[0]
    batch = pack([s], [image], tok, n)
    batch["image_positions"] = batch["image_positions"] + torch.tensor([0, 1])
    with pytest.raises(ValueError, match="image_positions do not match"):
        vlm(batch)
    batch = pack([s], [image], tok, n)
    batch["pixel_values"] = torch.zeros(0, 3, 32, 32)
    with pytest.raises(ValueError, match="0 pixel_values but 1 image_positions"):
        vlm(batch)
    batch["pixel_values"] = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)  # the loader's bytes, not normalised
    with pytest.raises(ValueError, match="pixel_values are torch.uint8; normalise them: mixer.batch.normalize_pixels"):
        vlm(batch)


def test_auto_attention_is_eager_on_cpu_and_flash_where_installed():
    assert resolve_attn_implementation("auto", cuda=False, flash_installed=True) == "eager"
    assert resolve_attn_implementation("auto", cuda=True, flash_installed=True) == "flash_attention_2"
    assert resolve_attn_implementation("auto", cuda=True, flash_installed=False) == "sdpa"
    assert resolve_attn_implementation("sdpa", cuda=False, flash_installed=False) == "sdpa"
