import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixer.ablate import grid_variants, random_variants, variants_for
from mixer.manifest.runtime import AblationConfig


def test_grid_gives_the_varied_source_exactly_its_share_and_keeps_the_others_relative_weights():
    vs = grid_variants({"a": 2, "b": 1, "c": 1}, "a", [0.5, 0.2, 0.05])
    assert [v.name for v in vs] == ["declared", "a-0.5", "a-0.2", "a-0.05"]
    expected = [
        {"a": 0.5, "b": 0.25, "c": 0.25},
        {"a": 0.5, "b": 0.25, "c": 0.25},
        {"a": 0.2, "b": 0.4, "c": 0.4},
        {"a": 0.05, "b": 0.475, "c": 0.475},
    ]
    for v, want in zip(vs, expected, strict=True):
        assert list(v.mixture) == ["a", "b", "c"]
        assert v.mixture == pytest.approx(want, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    weights=st.lists(st.floats(0.01, 100), min_size=2, max_size=6),
    share=st.floats(0.001, 0.999),
    which=st.integers(0, 5),
)
def test_grid_variant_invariants(weights, share, which):
    mixture = {f"s{i}": w for i, w in enumerate(weights)}
    vary = f"s{which % len(weights)}"
    v = grid_variants(mixture, vary, [share])[1]
    assert v.mixture[vary] == share
    assert math.isclose(sum(v.mixture.values()), 1.0, rel_tol=1e-12)
    others = [k for k in mixture if k != vary]
    for k in others:  # relative weights of the others are those declared
        assert v.mixture[k] / v.mixture[others[0]] == pytest.approx(mixture[k] / mixture[others[0]], rel=1e-9)


@pytest.mark.parametrize(
    ("mixture", "vary", "shares", "message"),
    [
        ({"a": 1, "b": 1}, "c", [0.1], "source 'c' is not in the mixture"),
        ({"a": 1, "b": 1}, "a", [1.0], "share 1.0 of 'a' must be in (0, 1)"),
        ({"a": 1, "b": 0}, "a", [0.5], "every other source of the mixture has weight 0"),
        ({"a": 1, "b": 1}, "a", [0.1, 0.1], "two variants are both named 'a-0.1'"),
        ({"a": 0, "b": 0}, "a", [0.1], "has no positive weight"),
    ],
)
def test_grid_rejects_bad_input_with_a_clear_message(mixture, vary, shares, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        grid_variants(mixture, vary, shares)


def test_variant_names_are_folder_safe():
    vs = grid_variants({"ocr vqa/2": 1, "caps": 1}, "ocr vqa/2", [0.125])
    assert vs[1].name == "ocr_vqa_2-0.125"


DECLARED = {"caps": 5.0, "vqa": 3.0, "ocr": 2.0}


def test_random_variants_are_deterministic_positive_and_normalised():
    a = random_variants(DECLARED, 12, 8.0, seed=3)
    b = random_variants(DECLARED, 12, 8.0, seed=3)
    c = random_variants(DECLARED, 12, 8.0, seed=4)
    assert a == b
    assert [v.mixture for v in a[1:]] != [v.mixture for v in c[1:]]
    assert a[0].name == "declared" and a[0].mixture == {"caps": 0.5, "vqa": 0.3, "ocr": 0.2}
    assert [v.name for v in a[1:]] == [f"random-{i:02d}" for i in range(12)]
    for v in a:
        assert list(v.mixture) == list(DECLARED)
        assert math.isclose(sum(v.mixture.values()), 1.0, rel_tol=1e-12)
        assert all(x > 0 for x in v.mixture.values())


def test_random_variants_follow_the_dirichlet_moments():
    shares = np.array([0.5, 0.3, 0.2])
    for concentration in (5.0, 200.0):
        draws = np.array([list(v.mixture.values()) for v in random_variants(DECLARED, 4000, concentration, 0)[1:]])
        # Dirichlet(c·s): mean s, variance s(1-s)/(c+1)
        assert np.abs(draws.mean(axis=0) - shares).max() < 0.01
        assert draws.var(axis=0) == pytest.approx(shares * (1 - shares) / (concentration + 1), rel=0.1)


def test_random_variants_keep_a_zero_weight_source_at_zero():
    vs = random_variants({"a": 1, "b": 1, "z": 0}, 5, 4.0, seed=0)
    assert all(v.mixture["z"] == 0.0 for v in vs)
    assert all(math.isclose(v.mixture["a"] + v.mixture["b"], 1.0) for v in vs)


def test_variants_for_dispatches_on_the_ablation_kind():
    mixture = {"caps": 2.0, "ocr": 1.0}
    grid = AblationConfig.model_validate({"stage": "s", "grid": {"vary": "ocr", "shares": [0.1, 0.3]}})
    rand = AblationConfig.model_validate({"stage": "s", "random": {"n": 4, "concentration": 3.0}})
    assert variants_for(grid, mixture, seed=0) == grid_variants(mixture, "ocr", [0.1, 0.3])
    assert variants_for(rand, mixture, seed=9) == random_variants(mixture, 4, 3.0, 9)
