"""Train, save and load tokenizers: a tiny byte-level BPE for tests and demos, and any 🤗 tokenizer made VLM-ready.

Both paths end in `AutoTokenizer.from_pretrained(folder_or_name)`, so the tiny tokenizer a test trains and
`microsoft/phi-2` on a user's machine go through the same loading code. `load_tokenizer` adds the `<image>` special
token (and a pad token) when a tokenizer lacks them: the model must then resize its embeddings to `len(tokenizer)`
(`model.resize_token_embeddings(len(tokenizer))`), which `train` does when it assembles the LM.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mixer.templates.spec import IMAGE_TOKEN

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK, IMAGE_TOKEN)  # ids 0..4 in a trained tokenizer, in this order

# transformers 5 renamed `additional_special_tokens` to `extra_special_tokens`.
_EXTRA = "extra_special_tokens" if int(transformers.__version__.split(".")[0]) >= 5 else "additional_special_tokens"


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`, save it with `save_pretrained` into `out_dir`, and return it.

    Byte-level: every string encodes without `<unk>` and decodes back exactly. The same texts give the same
    tokenizer (the BPE trainer breaks ties deterministically).
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, **{_EXTRA: [IMAGE_TOKEN]}
    )
    tok.save_pretrained(str(out_dir))
    return tok


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(name_or_path)` with `<image>` as a special token and a pad token (eos if none).

    Phi-2 and TinyLlama tokenizers have no `<image>`: it is added, so `len(tokenizer)` grows by one and the model
    must resize its embeddings to `len(tokenizer)`.
    """
    tok = AutoTokenizer.from_pretrained(name_or_path)
    ensure_vlm_tokens(tok)
    return tok


def ensure_vlm_tokens(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add `<image>` as a special token and set pad to eos where missing, in place; return the tokenizer."""
    if IMAGE_TOKEN not in tok.all_special_tokens:
        tok.add_special_tokens({_EXTRA: [IMAGE_TOKEN]}, False)  # False: extend the extra special tokens
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer {tok.name_or_path!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok
