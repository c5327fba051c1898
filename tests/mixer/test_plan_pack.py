import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mixer.plan import ALGORITHMS, PlanSpec, SourceInput, iter_plan, packer
from mixer.plan.pack import best_fit_decreasing, first_fit_decreasing


def test_bfd_and_ffd_differ_on_a_hand_computed_case():
    # capacity 10, 3 bins; longest first: 7 -> bin0 (room 3), 4 -> bin1 (room 6), 4 -> bin1 (room 2), then the 1:
    # best fit puts it in the fullest bin that has room (bin1, room 2), first fit in the first (bin0, room 3).
    items = [4, 7, 1, 4]
    assert best_fit_decreasing(items, 10, 3).tolist() == [1, 0, 1, 1]
    assert first_fit_decreasing(items, 10, 3).tolist() == [1, 0, 0, 1]


def test_fixed_bins_leave_out_what_does_not_fit():
    # 6 -> bin0 (4 left), 5 -> bin1 (5 left), 5 -> bin1 (0 left), 4 -> bin0 (0 left), 3 fits nowhere
    items = [5, 6, 3, 5, 4]
    assert best_fit_decreasing(items, 10, 2).tolist() == [1, 0, -1, 1, 0]
    assert first_fit_decreasing(items, 10, 2).tolist() == [1, 0, -1, 1, 0]


def test_open_bins_and_overlong_items():
    assert best_fit_decreasing([3, 8, 2, 9], 10).tolist() == [2, 1, 1, 0]
    assert first_fit_decreasing([3, 8, 2, 9], 10).tolist() == [2, 1, 1, 0]
    assert best_fit_decreasing([11, 2], 10).tolist() == [-1, 0]
    assert first_fit_decreasing([], 10).tolist() == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 20), max_size=40), st.integers(20, 40), st.sampled_from(sorted(ALGORITHMS)))
def test_packing_never_overfills_and_open_bins_place_everything(items, capacity, name):
    where = ALGORITHMS[name](items, capacity, None)
    assert (where >= 0).all()
    loads = np.bincount(where, weights=items, minlength=1) if items else np.zeros(0)
    assert (loads <= capacity).all()
    # decreasing heuristics never need more than twice the lower bound of bins (plus one)
    assert len(loads) <= 2 * int(np.ceil(sum(items) / capacity)) + 1


def test_unknown_algorithm_is_rejected_with_the_known_names():
    try:
        packer("next_fit")
    except ValueError as e:
        assert "best_fit_decreasing" in str(e) and "next_fit" in str(e)
    else:
        raise AssertionError("no error")
    spec = PlanSpec(seq_len=8, weight_by="tokens", seed=0, num_sequences=1, algorithm="nope")
    try:
        iter_plan([SourceInput("a", 1.0, np.array([3], dtype=np.int32))], spec)
    except ValueError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("no error")
