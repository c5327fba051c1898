"""The demo's shuffled-image control: every question is shown another question's image, and nothing else changes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mixer.evals import Item
from train.demo import shuffled


def _items() -> list[Item]:
    return [
        Item(f"q{n}", Path(f"/data/{img}.jpg"), f"question {n}", "yes" if n % 2 else "no", image_ref=f"{img}.jpg")
        for n, img in enumerate(["a", "a", "b", "b", "c", "c", "d"])
    ]


def test_every_question_gets_another_image_and_shared_images_stay_shared() -> None:
    items = _items()
    moved = shuffled(items, seed=0)
    assert [(i.question_id, i.text, i.answer) for i in moved] == [(i.question_id, i.text, i.answer) for i in items]
    for before, after in zip(items, moved, strict=True):
        assert after.image_ref != before.image_ref
        assert after.image == Path("/data") / after.image_ref  # path and name move together
    # questions that shared an image still share one, and every image is shown as often as before
    assert moved[0].image_ref == moved[1].image_ref and moved[2].image_ref == moved[3].image_ref
    counts = Counter(i.image_ref for i in items)
    assert sorted(Counter(i.image_ref for i in moved).values()) == sorted(counts.values())
    assert {i.image_ref for i in moved} == set(counts)


def test_the_same_seed_gives_the_same_control() -> None:
    first = [i.image_ref for i in shuffled(_items(), seed=3)]
    assert first == [i.image_ref for i in shuffled(_items(), seed=3)]
    assert any(
        [i.image_ref for i in shuffled(_items(), seed=s)] != first for s in range(4, 10)
    )  # another seed, another permutation
