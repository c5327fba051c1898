"""`FastEncoder`: `encode` for samples the length index has already checked — the loader's read-time path.

`encode` tokenises a sample twice, piece by piece for the mask and once more as a whole to catch tokens merging
across a turn boundary. The length index (`mixer.lengths`) ran exactly that check for every sample when the build was
made and gave a mismatching sample length 0, so the planner never places it. At read time the per-piece tokens are
therefore all that is needed: for a sample `encode` accepts, `FastEncoder` returns the very same `Encoded` (a test
compares the two over every template). A sample that changed since the index was built is caught by the caller
against its planned length (`mixer.loader.samples.cut`), not here.

What it saves: the whole-text tokenisation, the `<image>` id looked up per sample, and, for a 🤗 fast tokenizer,
the Python layer of `tokenizer(...)` (the Rust `encode_batch_fast`, which skips the offsets nobody reads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mixer.templates.encode import IGNORE_INDEX, Encoded, Piece, _check_n_image_tokens, _ids, _image_id, render
from mixer.templates.spec import IMAGE_TOKEN, Template, get_template


class FastEncoder:
    """`encode(conversation, tokenizer, template, n_image_tokens, task, key)` minus the whole-text check.

    Built once per (tokenizer, template, image tokens), e.g. per loader worker; call it per sample.
    """

    def __init__(self, tokenizer: Any, template: Template | str, n_image_tokens: int) -> None:
        _check_n_image_tokens(n_image_tokens)
        self.tokenizer = tokenizer
        self.template = get_template(template) if isinstance(template, str) else template
        self.n_image_tokens = n_image_tokens
        self.image_id = _image_id(tokenizer)

    def __call__(self, conversation: list[dict], task: str | None = None, key: str = "") -> Encoded:
        pieces = render(conversation, self.tokenizer, self.template, task, key)
        return self.assemble(pieces, self._tokenize([p.text for p in pieces]))

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Each piece's ids as `encode._tokenize_pieces` gives them: pieces after the first behind one IMAGE_TOKEN."""
        if not texts:
            return []
        batch = [texts[0]] + [IMAGE_TOKEN + s for s in texts[1:]]
        fast = rust_batch(self.tokenizer)
        rows = fast(batch) if fast is not None else _ids(self.tokenizer, batch)
        for row in rows[1:]:
            assert row and row[0] == self.image_id, "an added special token must tokenise on its own"
        return [rows[0]] + [row[1:] for row in rows[1:]]

    def assemble(self, pieces: list[Piece], per_piece: list[list[int]]) -> Encoded:
        """The `Encoded` of pieces and their ids: `encode`'s per-token loop done a run of ids at a time."""
        image_id, n_img = self.image_id, self.n_image_tokens
        ids: list[int] = []
        labels: list[int] = []
        image_starts: list[int] = []
        turn_ends: list[int] = []
        for piece, row in zip(pieces, per_piece, strict=True):
            start = 0
            while True:
                try:
                    at = row.index(image_id, start)
                except ValueError:
                    break
                _extend(ids, labels, row[start:at], piece.labelled)
                image_starts.append(len(ids))
                ids.extend([image_id] * n_img)
                labels.extend([IGNORE_INDEX] * n_img)
                start = at + 1
            _extend(ids, labels, row[start:] if start else row, piece.labelled)
            if piece.labelled:
                turn_ends.append(len(ids))
        return Encoded(ids, labels, image_starts, turn_ends)


def _extend(ids: list[int], labels: list[int], run: list[int], labelled: bool) -> None:
    ids.extend(run)
    labels.extend(run if labelled else [IGNORE_INDEX] * len(run))


def rust_batch(tokenizer: Any) -> Callable[[list[str]], list[list[int]]] | None:
    """`tokenizer(texts, add_special_tokens=False)["input_ids"]` straight from its Rust backend, or None.

    None (the caller goes through `tokenizer(...)`) unless the tokenizer is a plain 🤗 fast tokenizer whose call ends
    in the backend's `encode_batch` untouched: no subclass override of the encode path, special tokens not split,
    and no truncation or padding configured on the backend (the 🤗 call would switch those off first).
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    backend = getattr(tokenizer, "_tokenizer", None)
    cls = type(tokenizer)
    if (
        not isinstance(tokenizer, PreTrainedTokenizerFast)
        or backend is None
        or not hasattr(backend, "encode_batch_fast")
        or cls._encode_plus is not PreTrainedTokenizerFast._encode_plus
        or cls.__call__ is not PreTrainedTokenizerBase.__call__
        or getattr(tokenizer, "split_special_tokens", False)
        or backend.encode_special_tokens
        or backend.truncation is not None
        or backend.padding is not None
    ):
        return None

    def ids(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]

    return ids
