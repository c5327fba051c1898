"""The demo's held-out benchmarks, written in the native layouts of POPE and VQAv2 about new demo scenes.

Layout under `out/benchmarks`, the data root `train eval` reads (each benchmark in its folder, COCO-style images):

    pope/coco_pope_{random,popular,adversarial}.json   JSON lines {"question_id", "image", "text", "label"}
    pope/val2014/COCO_val2014_{image_id:012d}.jpg
    vqav2/v2_OpenEnded_mscoco_val2014_questions.json        {"info", "task_type", "data_type", "license",
                                                             "data_subtype", "questions": [{image_id, question,
                                                             question_id}]}
    vqav2/v2_mscoco_val2014_annotations.json                {"info", "license", "data_subtype", "annotations":
                                                             [{question_id, image_id, question_type, answer_type,
                                                             multiple_choice_answer, answers[10]}], "data_type"}
    vqav2/val2014/COCO_val2014_{image_id:012d}.jpg

POPE asks "Is there a <object> in the image?" about colour-shape objects ("red circle"); per image the same objects
that are present are asked in all three files and the absent ones are chosen as POPE chooses them: `random` among
all absent objects, `popular` the absent objects most frequent over the benchmark's images, `adversarial` the absent
objects that co-occur most with the present ones, which in a scene of shapes are the swapped bindings (the blue circle
of a scene with a red circle and a blue square). Every file holds exactly as many "yes" as "no".

Every scene has two or three shapes so that each image has two present objects to ask about, and is square so that
an evaluator's centre crop and a training build's padding see the same pixels. The images are drawn
by the caller's `_Split`, which redraws any image byte-identical to a training image: none of them is in a shard.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from PIL import Image

from mixer.demo import formats, scenes

POPE_SPLITS = ("random", "popular", "adversarial")
# Images at scale 1: POPE asks two present and two absent objects of each image in each split file.
POPE_IMAGES = 25
POPE_PER_IMAGE = 2
VQAV2_IMAGES = 50
VQAV2_PER_IMAGE = 2
VQAV2_SPLIT = "val2014"
FIRST_IMAGE_ID = 100_000  # COCO val2014 ids are six digits; ours stay clear of the training files' numbers


def _coco_name(image_id: int) -> str:
    return f"COCO_{VQAV2_SPLIT}_{image_id:012d}.jpg"


def _scene(rng: random.Random) -> tuple[Image.Image, scenes.Scene]:
    scene = scenes.random_scene(rng, min_shapes=2, square=True)
    return scenes.render_scene(scene), scene


def _negatives(split: str, rng: random.Random, scene: scenes.Scene, popular: list[str]) -> list[str]:
    """POPE_PER_IMAGE absent objects of the scene, chosen as `split` chooses them."""
    absent = scenes.absent_objects(scene)
    if split == "random":
        return rng.sample(absent, POPE_PER_IMAGE)
    if split == "popular":
        return [o for o in popular if o in absent][:POPE_PER_IMAGE]
    # adversarial: swapped bindings first, then objects sharing a colour or a shape with one present
    swapped = scenes.swapped_objects(scene)
    colours, kinds = {s.colour for s in scene.shapes}, {s.kind for s in scene.shapes}
    near = [o for o in absent if o not in swapped and (o.split()[0] in colours or o.split()[1] in kinds)]
    rng.shuffle(swapped)
    rng.shuffle(near)
    return (swapped + near)[:POPE_PER_IMAGE]


def write_pope(sp: Any, n_images: int) -> dict[str, int]:
    """The three POPE files about `n_images` new scenes; returns questions per file."""
    rng = sp.rng("pope")
    drawn: list[tuple[int, scenes.Scene, list[str]]] = []
    for i in range(n_images):
        image_id = FIRST_IMAGE_ID + 17 * i + rng.randrange(17)
        scene = sp.image(f"pope/val2014/{_coco_name(image_id)}", partial(_scene, rng))
        # the present objects asked are the same in the three files; only the negatives differ
        drawn.append((image_id, scene, rng.sample(scenes.present_objects(scene), POPE_PER_IMAGE)))
    counts = Counter(o for _, scene, _ in drawn for o in scenes.present_objects(scene))
    # most frequent first; ties broken by the fixed object order so the file does not depend on dict order
    order = [f"{c} {k}" for c in scenes.COLOURS for k in scenes.SHAPES]
    popular = sorted(order, key=lambda o: (-counts[o], order.index(o)))
    sizes = {}
    for split in POPE_SPLITS:
        split_rng = sp.rng(f"pope-{split}")
        lines = []
        for image_id, scene, yes in drawn:
            no = _negatives(split, split_rng, scene, popular)
            asked = [(o, "yes") for o in yes] + [(o, "no") for o in no]
            for obj, label in asked:
                lines.append(
                    {
                        "question_id": len(lines) + 1,
                        "image": _coco_name(image_id),
                        "text": scenes.is_there(obj),
                        "label": label,
                    }
                )
        formats.write_jsonl(sp.file("pope", f"pope/coco_pope_{split}.json"), lines)
        sizes[split] = len(lines)
    return sizes


def _vqa_answers(rng: random.Random, answer: str, variants: list[str]) -> list[str]:
    """Ten annotators' answers: at least seven give `answer`, the others one of its `variants` (or `answer`)."""
    answers = [answer] * 7 + [rng.choice([answer, *variants]) for _ in range(3)]
    rng.shuffle(answers)
    return answers


# question prefix → (VQAv2 question_type, answer_type, variants of an answer as annotators write them)
VQA_KINDS: dict[str, tuple[str, str, Callable[[str], list[str]]]] = {
    "How many": ("how many", "number", lambda a: [a]),
    "What colour is the background": ("what color is the", "other", lambda a: [f"{a} background", a.capitalize()]),
    "What colour": ("what color is the", "other", lambda a: [a.capitalize(), f"{a}."]),
    "Where": ("where is the", "other", lambda a: [f"on {a}", f"{a} side", "middle" if a == "centre" else a]),
    "What shape": ("what", "other", lambda a: [f"{a}s", f"a {a}"]),
    "Is there": ("is there a", "yes/no", lambda a: [a.capitalize()]),
}


def _vqa_kind(question: str) -> tuple[str, str, Callable[[str], list[str]]]:
    return next(v for k, v in VQA_KINDS.items() if question.startswith(k))


def write_vqav2(sp: Any, n_images: int) -> int:
    """VQAv2's questions and annotations files about `n_images` new scenes; returns the number of questions.

    Counts are written as digits, as VQAv2's annotators write them (the official normalisation maps "two" to "2").
    """
    rng = sp.rng("vqav2")
    questions, annotations = [], []
    for i in range(n_images):
        image_id = FIRST_IMAGE_ID + 17 * i + rng.randrange(17)
        scene = sp.image(f"vqav2/{VQAV2_SPLIT}/{_coco_name(image_id)}", partial(_scene, rng))
        for k, (question, answer) in enumerate(rng.sample(scenes.scene_questions(scene), VQAV2_PER_IMAGE)):
            question_type, answer_type, variants = _vqa_kind(question)
            if answer_type == "number":
                answer = str(scenes.NUMBERS.index(answer))
            answers = _vqa_answers(rng, answer, variants(answer))
            question_id = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": question, "question_id": question_id})
            annotations.append(
                {
                    "question_type": question_type,
                    "multiple_choice_answer": Counter(answers).most_common(1)[0][0],
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)
                    ],
                    "image_id": image_id,
                    "answer_type": answer_type,
                    "question_id": question_id,
                }
            )
    qfile = sp.file("vqav2", f"vqav2/v2_OpenEnded_mscoco_{VQAV2_SPLIT}_questions.json")
    formats.write_vqav2_questions(qfile, VQAV2_SPLIT, questions)
    formats.write_vqav2_annotations(
        sp.file("vqav2", f"vqav2/v2_mscoco_{VQAV2_SPLIT}_annotations.json"), VQAV2_SPLIT, annotations
    )
    return len(questions)
