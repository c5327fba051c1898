"""The 🤗 export outside tinymix: the chat template gives training's token ids, and a fresh interpreter with no
tinymix importable answers through `pipeline("image-text-to-text")` as the trained model does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import AutoProcessor, AutoTokenizer, LlamaTokenizerFast

from mixer.loader.images import mean_std, preprocess
from mixer.manifest.model import ModelConfig
from mixer.templates import TEMPLATES, encode
from mixer.tokenizer import ensure_vlm_tokens, load_tokenizer
from train.evaluate import prompt_ids
from train.model import build_vlm
from train.model.hf_export import save_hf_export
from train.model.hf_template import chat_template

SIZE = 32
MODEL = {
    "vision": {
        "config": {
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 16,
        }
    },
    "connector": {"type": "mlp2x_gelu"},
    "llm": {
        "config": {
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
        }
    },
    "tokenizer": "set-by-the-test",
}
CONVERSATION = [
    {"role": "user", "content": "<image>\nWhat is the man holding?"},
    {"role": "assistant", "content": "A red book."},
    {"role": "user", "content": "Who is the author?"},
    {"role": "assistant", "content": "Two dogs."},
]


def _hf_messages(conversation: list[dict], image: Image.Image) -> list[dict]:
    """The same conversation in 🤗's multimodal message format (image as a content part)."""
    out = []
    for turn in conversation:
        text = turn["content"].replace("<image>", "").strip()
        parts = [{"type": "image", "image": image}] if "<image>" in turn["content"] else []
        out.append({"role": turn["role"], "content": [*parts, {"type": "text", "text": text}]})
    return out


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return load_tokenizer(str(tiny_tokenizer))


@pytest.fixture(scope="module")
def export(tok, tmp_path_factory):
    torch.manual_seed(0)
    vlm = build_vlm(ModelConfig.model_validate(MODEL), tok, SIZE).eval()
    out = tmp_path_factory.mktemp("export")
    save_hf_export(vlm, tok, out, image_size=SIZE, template="llava_v1")
    return vlm, out


@pytest.mark.parametrize("template", [name for name, t in TEMPLATES.items() if not t.chat_template])
def test_chat_template_renders_the_training_token_ids(tok, tmp_path, template):
    n_image_tokens = 4
    want = encode(CONVERSATION, tok, template, n_image_tokens).input_ids
    # the export's processor: its chat template expands each image to the model's run of <image> tokens
    torch.manual_seed(0)
    vlm = build_vlm(ModelConfig.model_validate(MODEL), tok, SIZE).eval()
    save_hf_export(vlm, tok, tmp_path, image_size=SIZE, template=template)
    processor = AutoProcessor.from_pretrained(tmp_path)
    image = Image.new("RGB", (40, 30), (200, 40, 40))
    got = processor.apply_chat_template(_hf_messages(CONVERSATION, image), tokenize=True, return_dict=True)
    ids = got["input_ids"]
    assert (ids[0] if isinstance(ids[0], list) else ids) == want
    # string contents with the <image> placeholder render the same text as the content-part form
    as_text = AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(CONVERSATION, tokenize=False)
    assert as_text == processor.apply_chat_template(_hf_messages(CONVERSATION, image), tokenize=False)


def test_a_tokenizer_that_adds_bos_is_exported_without_it(tok, tmp_path):
    # Llama's tokenizer puts <s> in front of every text; training never did (its templates write {bos} themselves)
    backend = Tokenizer.from_str(tok._tokenizer.to_str())  # a copy: the module's tokenizer stays as it is
    llama = LlamaTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", add_bos_token=True
    )
    llama = ensure_vlm_tokens(llama)
    assert llama("a cat")["input_ids"][0] == llama.bos_token_id
    want = encode(CONVERSATION, llama, "tinygptv", 4).input_ids
    torch.manual_seed(0)
    vlm = build_vlm(ModelConfig.model_validate(MODEL), llama, SIZE).eval()
    save_hf_export(vlm, llama, tmp_path, image_size=SIZE, template="tinygptv")
    processor = AutoProcessor.from_pretrained(tmp_path)
    got = processor.apply_chat_template(
        _hf_messages(CONVERSATION, Image.new("RGB", (40, 30))), tokenize=True, return_dict=True
    )["input_ids"]
    assert (got[0] if isinstance(got[0], list) else got) == want
    assert llama("a cat")["input_ids"][0] == llama.bos_token_id  # the caller's tokenizer is left as it was


def test_chat_template_prompt_is_the_generation_prompt(tok):
    question = [{"role": "user", "content": "<image>\nWhat is the man holding?"}]
    jinja = chat_template("llava_v1", tok)
    rendered = tok.apply_chat_template(question, chat_template=jinja, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<s>A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <image>\nWhat is the man holding? ASSISTANT:"
    )


ISOLATED = r"""
import importlib.util, json, sys
sys.path.append(sys.argv[1])  # site-packages only: no .pth files, so no editable tinymix
blocked = [m for m in ("shards", "mixer", "train") if importlib.util.find_spec(m) is not None]
from PIL import Image
from tokenizers import Tokenizer
from transformers import pipeline
pipe = pipeline("image-text-to-text", model=sys.argv[2])
image = Image.open(sys.argv[3])
messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": sys.argv[4]}]}]
out = pipe(text=messages, max_new_tokens=6, return_full_text=False)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("shards", "mixer", "train"))
print(json.dumps({"importable": blocked, "loaded": loaded, "answer": out[0]["generated_text"],
                  "model": type(pipe.model).__name__}))
"""


def test_native_export_answers_through_pipeline_in_a_fresh_interpreter(tok, export, tmp_path):
    vlm, out = export
    image_path = tmp_path / "image.png"
    Image.new("RGB", (48, 40), (30, 160, 90)).save(image_path)
    question = "What is the man holding?"
    script = tmp_path / "isolated.py"
    script.write_text(ISOLATED)
    site = sysconfig.get_paths()["purelib"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    # -I: no PYTHONPATH, no user site, no script dir or cwd on sys.path; -S: no site-packages .pth processing
    args = [sys.executable, "-I", "-S", str(script), site, str(out), str(image_path), question]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["importable"] == [] and result["loaded"] == []
    assert result["model"] == "LlavaForConditionalGeneration"
    # the trained model's own greedy answer to the same image and question, through tinymix's code
    from mixer.evalset import EvalItem

    item = EvalItem(id="q", source="", task="vqa", image=str(image_path), question=question, answer="")
    ids = torch.tensor([prompt_ids(tok, "llava_v1", item, vlm.n_image_tokens(SIZE))])
    pixels = preprocess(image_path.read_bytes(), SIZE, mean_std("clip_vision_model"))[None]
    ours = vlm.generate(pixels, ids, 6)[0].tolist()
    assert result["answer"] == tok.decode(ours, skip_special_tokens=True)
    assert result["answer"].strip()  # a random tiny model still says something: the comparison has content
