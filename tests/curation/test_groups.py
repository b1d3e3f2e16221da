"""Per-group selections and the collectives they use, in one process (N processes: test_distributed.py)."""

import numpy as np

from dinoflow.curation.groups import bottom_k_global, first_in_group, select_smallest
from dinoflow.curation.seeded import row_hash, row_uniform
from dinoflow.distributed.comm import Comm

ONE = Comm()


def test_select_smallest_per_group_by_key_then_gid():
    rng = np.random.default_rng(0)
    n = 500
    group, key, gid = rng.integers(0, 6, n), rng.integers(0, 20, n).astype(np.float64), rng.permutation(n) + 1000
    budget = np.array([0, 1, 5, 50, 200, 3])
    got = select_smallest(ONE, group, key, gid, budget)
    for g in range(6):
        members = np.flatnonzero(group == g)
        ranked = members[np.lexsort((gid[members], key[members]))]
        assert set(np.flatnonzero(got & (group == g))) == set(ranked[: budget[g]])


def test_first_in_group_and_bottom_k():
    groups = np.array([[1, 2], [1, 3], [1, 2], [5, 5], [1, 3]])
    assert first_in_group(ONE, groups, np.array([9, 4, 2, 7, 8])).tolist() == [2, 4, 2, 7, 4]
    mask = bottom_k_global(ONE, np.array([5, 1, 5, 0]), np.array([0, 1, 2, 3]), 3)
    assert mask.tolist() == [True, True, False, True]


def test_all_to_all_and_send_back_round_trip_in_one_process():
    (a, b), src = ONE.all_to_all([np.arange(5), np.ones((5, 2))], np.zeros(5, np.int64))
    assert a.tolist() == list(range(5)) and b.shape == (5, 2) and src.tolist() == [0] * 5
    (back,) = ONE.send_back([a * 10], src, np.zeros(5, np.int64))
    assert back.tolist() == [0, 10, 20, 30, 40]


def test_seeded_row_numbers_depend_only_on_seed_purpose_and_gid():
    gid = np.arange(10_000)
    h = row_hash(3, 1, gid)
    np.testing.assert_array_equal(h[5000:], row_hash(3, 1, gid[5000:]))  # the same wherever a row sits
    assert not np.array_equal(h, row_hash(4, 1, gid)) and not np.array_equal(h, row_hash(3, 2, gid))
    u = row_uniform(3, 1, gid)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
