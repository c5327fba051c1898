"""Text-only sources (ShareGPT, Alpaca, Unnatural Instructions): records, bad rows, shards and the template's masks.

Fixtures follow the published files: ShareGPT_V3's split conversations (some open with a `gpt` turn), Alpaca's
`alpaca_data.json` (empty `input` on most rows), Unnatural Instructions' `core_data.jsonl` (one object per line).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shards.options import ShardOptions
from shards.readers import SourceSpec, get_reader
from shards.record import BadRow, Record
from shards.task import process_shard


def turn(frm: str, value: str) -> dict:
    return {"from": frm, "value": value}


SHAREGPT = [
    {
        "id": "QWJhYvA_0",
        "conversations": [
            turn("human", "What is a dog?"),
            turn("gpt", "A small animal."),
            turn("human", "And a cat?"),
            turn("gpt", "Another small animal."),
        ],
    },
    # the second half of a split conversation opens with the model's turn, and ends on an unanswered question
    {
        "id": "QWJhYvA_1",
        "conversations": [
            turn("gpt", "(cont.)"),
            turn("human", "Thanks."),
            turn("gpt", "Welcome."),
            turn("human", "Bye"),
        ],
    },
    {"id": "empty_0", "conversations": []},
    {"id": "sys_0", "conversations": [turn("system", "Be nice."), turn("human", "Hi"), turn("gpt", "Hello")]},
    {"id": "img_0", "conversations": [turn("human", "<image>\nWhat is it?"), turn("gpt", "A dog.")]},
    {"id": "twice_0", "conversations": [turn("human", "Hi"), turn("human", "Hi?"), turn("gpt", "Hello")]},
]

ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well. 2. Sleep. 3. Move."},
    {"instruction": "Classify the animal.", "input": "A red dog.", "output": "Mammal."},
    {"instruction": "Say nothing.", "input": "", "output": "   "},
    {"instruction": "No output key.", "input": ""},
]

UNNATURAL = [
    {
        "instruction": "You are given a list of numbers. Say whether it is sorted.",
        "instances": [
            {
                "instruction_with_input": "You are given a list of numbers. Say whether it is sorted.\n[1, 2, 3]",
                "input": "[1, 2, 3]",
                "constraints": "The output should be 'True' or 'False'.",
                "output": "True",
            }
        ],
        "reformulations": [
            {"instruction": "Is the list sorted?", "instruction_with_input": "x", "input": "x", "output": "True"}
        ],
    },
    {
        "instruction": "Describe the colour.",
        "instances": [
            {
                "instruction_with_input": "Describe the colour. Red",
                "input": "Red",
                "constraints": "None",
                "output": "Warm.",
            }
        ],
    },
    {"instruction": "Nothing here.", "instances": []},
]


def read(kind: str, path: Path) -> list[Record | BadRow]:
    return list(get_reader(kind)(SourceSpec("t", kind, [str(path)], "instruction")))


def test_sharegpt(tmp_path: Path) -> None:
    path = tmp_path / "ShareGPT_V3_unfiltered_cleaned_split.json"
    path.write_text(json.dumps(SHAREGPT, indent=2))
    items = read("sharegpt-json", path)
    assert items[0].conversation == [
        {"role": "user", "content": "What is a dog?"},
        {"role": "assistant", "content": "A small animal."},
        {"role": "user", "content": "And a cat?"},
        {"role": "assistant", "content": "Another small animal."},
    ]
    assert (items[0].image, items[0].ids, items[0].meta) == (None, {"id": "QWJhYvA_0"}, {})
    assert items[1].conversation == [
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "Welcome."},
    ]
    assert items[1].meta == {"dropped_turns": 2}
    assert [str(b) for b in items[2:]] == [
        f"{path}: [2]: no assistant turn in 'conversations'",
        f"{path}: [3]: conversations[0].from is 'system', expected a user or assistant role",
        f"{path}: [4]: no image but 1 <image> placeholder(s)",
        f"{path}: [5]: conversations[1] is a second user turn in a row; turns must alternate, user first",
    ]


def test_alpaca(tmp_path: Path) -> None:
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(ALPACA, indent=4))
    items = read("alpaca-json", path)
    assert [r.conversation for r in items[:2]] == [
        [
            {"role": "user", "content": "Give three tips for staying healthy."},
            {"role": "assistant", "content": "1. Eat well. 2. Sleep. 3. Move."},
        ],
        [
            {"role": "user", "content": "Classify the animal.\n\nA red dog."},
            {"role": "assistant", "content": "Mammal."},
        ],
    ]
    assert [str(b) for b in items[2:]] == [
        f"{path}: [2]: empty 'output'",
        f"{path}: [3]: missing field 'output'",
    ]


def test_unnatural_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "core_data.jsonl"
    lines = [json.dumps(UNNATURAL[0]), "", json.dumps(UNNATURAL[1]), '{"instruction": "cut', json.dumps(UNNATURAL[2])]
    path.write_text("\n".join(lines) + "\n")
    items = read("unnatural-jsonl", path)
    assert items[0].conversation == [
        {
            "role": "user",
            "content": "You are given a list of numbers. Say whether it is sorted.\n[1, 2, 3] "
            "The output should be 'True' or 'False'.",
        },
        {"role": "assistant", "content": "True"},
    ]
    assert items[0].meta == {"instruction": UNNATURAL[0]["instruction"], "reformulations": 1}
    assert items[1].conversation[0]["content"] == "Describe the colour. Red None"  # MiniGPT-v2 appends it as given
    assert [(b.row, b.line, str(b)) for b in items[2:]] == [
        (2, 4, f"{path}:4: not JSON: Unterminated string starting at at column 17"),
        (3, 5, f"{path}:5: empty 'instances'"),
    ]


def test_text_only_shards_and_template_masks(tmp_path: Path, tiny_tokenizer) -> None:
    import webdataset as wds

    from mixer.templates.encode import IGNORE_INDEX, encode
    from mixer.tokenizer import load_tokenizer

    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(ALPACA))
    items = read("alpaca-json", path)
    process_shard(items, ShardOptions(samples_per_shard=10), str(tmp_path / "out"), 0)
    status = pq.read_table(tmp_path / "out/00000_status.parquet").to_pylist()
    assert [s["status"] for s in status] == ["success", "success", "failed_to_read", "failed_to_read"]
    samples = list(wds.WebDataset([str(tmp_path / "out/00000.tar")], shardshuffle=False).decode())
    assert [sorted(k for k in s if not k.startswith("__")) for s in samples] == [["json"], ["json"]]  # no image
    tok = load_tokenizer(str(tiny_tokenizer))
    stored = samples[1]["json"]
    enc = encode(stored["conversation"], tok, "llava_v1", 4, task=stored["task"], key=samples[1]["__key__"])
    assert enc.image_starts == []
    learnt = tok.decode([t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE_INDEX])
    assert learnt == " Mammal.</s>"  # the answer and its end marker, nothing of the prompt


@pytest.mark.parametrize("kind", ["sharegpt-json", "alpaca-json"])
def test_a_dict_instead_of_a_list_names_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"data": []}))
    with pytest.raises(ValueError, match=r"x\.json"):
        read(kind, path)
