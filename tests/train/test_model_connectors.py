"""Vision towers and connectors: each emits exactly the image tokens the manifest plans, at two image sizes."""

from __future__ import annotations

import pytest
import torch
from test_model_fixtures import PATCH, SIGLIP, VISION, model_config, train_tokenizer
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from train.model import build_vlm
from train.model.connectors import CONNECTORS, ConnectorSpec, build_connector
from train.model.vision import build_vision


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("connector", sorted(CONNECTORS))
@pytest.mark.parametrize("image_size", [32, 64])
def test_every_connector_emits_the_planned_tokens(tok, connector, image_size):
    torch.manual_seed(0)
    cfg = model_config("llama", connector)
    vlm = build_vlm(cfg, tok, image_size).eval()
    planned = cfg.image_tokens_for(image_size)
    expected = 5 if connector in ("resampler", "qformer") else (image_size // PATCH) ** 2
    assert planned == expected
    assert vlm.n_image_tokens(image_size) == planned
    with torch.no_grad():
        out = vlm.image_embeddings(torch.randn(2, 3, image_size, image_size))
    assert out.shape == (2, planned, 64)
    assert torch.isfinite(out).all()


def test_unknown_connector_is_rejected():
    with pytest.raises(ValueError, match="unknown connector 'perceiver'"):
        build_connector(ConnectorSpec("perceiver", 32, 64))


def test_mlp2x_gelu_is_linear_gelu_linear():
    torch.manual_seed(0)
    conn = build_connector(ConnectorSpec("mlp2x_gelu", 32, 64))
    x = torch.randn(2, 4, 32)
    first, second = conn.proj[0], conn.proj[2]
    expected = second(torch.nn.functional.gelu(first(x)))
    torch.testing.assert_close(conn(x), expected)


def test_feature_layer_and_cls_selection_match_the_hidden_states():
    torch.manual_seed(0)
    cfg = model_config("llama", "linear", vision_options={"feature_layer": -2})
    tower = build_vision(cfg.vision).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        hidden = tower.model(pixel_values=x, output_hidden_states=True).hidden_states
        torch.testing.assert_close(tower(x), hidden[-2][:, 1:])
        tower.drop_cls = False
        torch.testing.assert_close(tower(x), hidden[-2])
    assert tower.n_features(32) == 5


def test_kept_cls_adds_one_token(tok):
    cfg = model_config("llama", "linear", vision_options={"drop_cls": False})
    vlm = build_vlm(cfg, tok, 32)
    assert vlm.n_image_tokens(32) == cfg.image_tokens_for(32) == 5


def test_siglip_has_no_cls_to_drop(tok):
    torch.manual_seed(0)
    cfg = model_config("llama", "mlp2x_gelu", vision=SIGLIP)
    vlm = build_vlm(cfg, tok, 64).eval()
    assert not vlm.vision.drop_cls
    with torch.no_grad():
        hidden = vlm.vision.model(
            pixel_values=torch.zeros(1, 3, 64, 64), output_hidden_states=True, interpolate_pos_encoding=True
        )
        assert vlm.vision(torch.zeros(1, 3, 64, 64)).shape == hidden.hidden_states[-2].shape == (1, 16, 32)
    assert vlm.n_image_tokens(64) == cfg.image_tokens_for(64) == 16


def test_larger_images_interpolate_position_embeddings():
    torch.manual_seed(0)
    tower = build_vision(model_config().vision).eval()
    assert tower.model.config.image_size == VISION["image_size"]
    with torch.no_grad():
        feats = tower(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 16, 32)


def test_plan_and_model_disagreeing_is_an_error(tok):
    cfg = model_config("llama", "linear", image_tokens=7)
    with pytest.raises(ValueError, match="emits 4 tokens per image at 32px but the manifest plans 7"):
        build_vlm(cfg, tok, 32)


def test_unknown_tower_type_is_rejected(tok):
    cfg = model_config("llama", "linear", vision={**VISION, "model_type": "vit"})
    with pytest.raises(ValueError, match="model.vision.config.model_type: unsupported vision model_type 'vit'"):
        build_vlm(cfg, tok, 32)


def test_tokenizer_without_an_image_token_is_rejected():
    plain = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "cat": 2}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=plain, unk_token="<unk>")
    with pytest.raises(ValueError, match="model.tokenizer: the tokenizer has no <image> token"):
        build_vlm(model_config("llama", "linear"), tok, 32)
