"""Per-row pseudo-random numbers that depend only on (seed, purpose, gid).

A draw made with a generator depends on the order rows are visited, which depends on how the
pool is split over processes. A hash of the row's global id does not: every rank computes the
same number for the same row, with no communication (SplitMix64 finaliser, vectorised).
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def row_hash(seed: int, purpose: int, gid: np.ndarray) -> np.ndarray:
    """[n] int64 in [0, 2^63): a seeded hash of each global row id."""
    with np.errstate(over="ignore"):
        base = _mix(np.asarray(np.uint64((seed * 1_000_003 + purpose) % 2**64) + _GOLDEN))
        h = _mix(np.asarray(gid, np.uint64) * _GOLDEN + base)
    return (h >> np.uint64(1)).astype(np.int64)


def row_uniform(seed: int, purpose: int, gid: np.ndarray) -> np.ndarray:
    """[n] float64 uniform in [0, 1), from `row_hash`."""
    return (row_hash(seed, purpose, gid) >> 10).astype(np.float64) / float(2**53)


# purposes: one number per use, so two draws with the same seed are independent
KMEANS_TRAIN, KMEANS_INIT, SAMPLE_DRAW, IVF_TRAIN = 1, 2, 3, 4
