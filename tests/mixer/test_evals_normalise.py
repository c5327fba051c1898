"""The answer normalisation rules, case by case: expected values worked out by hand from the evaluators' rules."""

from __future__ import annotations

import pytest

from mixer.evals.normalise import (
    CONTRACTIONS,
    choice_letter,
    evalai_answer,
    gqa_answer,
    mme_yes_no,
    pope_yes_no,
    true_false,
    vqa_answer,
    vqa_punctuation,
)
from mixer.evals.vqa import soft_accuracy, vqa_official


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("two", "2"),
        ("Two", "2"),
        ("none", "0"),
        ("the cat", "cat"),
        ("A Cat", "cat"),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("yes.", "yes"),
        ("YES", "yes"),
        ("black-and-white", "black and white"),  # "-" inside a word becomes a space
        ("left - right", "left right"),  # next to a space it is deleted
        ("1,000", "1000"),  # a 1,000-style number deletes every punctuation mark
        ("3.5", "3.5"),  # a period before a digit stays
        ("what?!", "what"),
        ("  ten\tdogs\n", "10 dogs"),
    ],
)
def test_vqa_answer(raw, normalised):
    assert vqa_answer(raw) == normalised


def test_period_strip_stops_after_32_as_the_evaluator_does():
    # the evaluator hands re.UNICODE (32) to re.sub as its count
    assert vqa_punctuation("." * 40) == "." * 8


def test_contractions_map_keeps_the_evaluators_entries():
    assert len(CONTRACTIONS) == 120  # the evaluator's dict has 120 keys
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # reversed in the evaluator
    assert CONTRACTIONS["yall'd've"] == CONTRACTIONS["y'alld've"] == CONTRACTIONS["y'all'dve"] == "y'all'd've"
    assert vqa_answer("Im") == "im"  # the capitalised key can never match lower-cased text


def test_soft_accuracy_is_the_leave_one_out_mean():
    # 2 of 10 humans said "2": leaving one of them out leaves 1 match (1/3), leaving another out leaves 2 (2/3)
    assert soft_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert soft_accuracy("3", ["2"] * 2 + ["3"] * 8) == 1.0
    assert soft_accuracy("4", ["2"] * 2 + ["3"] * 8) == 0.0


def test_vqa_official_processes_references_only_when_they_disagree():
    # disagreeing references get punctuation processing: "black-and-white" becomes "black and white"
    assert vqa_official("black and white", ["black-and-white"] * 5 + ["gray"] * 5) == 1.0
    # unanimous references are compared as stored
    assert vqa_official("black and white", ["black-and-white"] * 10) == 0.0


def test_evalai_normalises_both_sides():
    assert evalai_answer("Coca-Cola") == "coca cola" == evalai_answer("coca cola")
    assert evalai_answer("What's THAT?") == "what 's that"


def test_gqa_pope_mme_vsr_parses():
    assert gqa_answer("Yes.") == "yes" and gqa_answer("the cat") == "the cat"
    assert pope_yes_no("Yes, there is a cat.") == "yes"
    assert pope_yes_no("There is not a cat. No doubt.") == "no"
    assert pope_yes_no("No") == "no" and pope_yes_no("Nope") == "yes"  # LLaVA's rule: only the words No / no / not
    assert mme_yes_no("Yes.") == "yes" and mme_yes_no("no, it is not") == "no" and mme_yes_no("I think so") == "other"
    assert true_false("The statement is False.") == "false" and true_false("yes") == "true"
    assert true_false("maybe") is None


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("The answer is B.", "B"),  # a letter inside a sentence
        ("(C) green", "C"),
        ("A. red", "A"),
        ("A cat sits on the mat", "B"),  # "A" as an article: the option text decides
        ("it is green", "C"),  # no letter: the one option text in the answer
        ("red or blue", None),  # two option texts: undecided
        ("A or B", None),  # two letters: undecided
    ],
)
def test_choice_letter(answer, letter):
    assert choice_letter(answer, {"A": "red", "B": "cat", "C": "green"} if "cat" in answer else _COLOURS) == letter


_COLOURS = {"A": "red", "B": "blue", "C": "green"}
