"""The flat buffers, uniform and prioritised: pairs of consecutive steps of one row, sampled
uniformly, never across the write head."""

import numpy as np
import pytest
import scipy.stats

from .helpers.flat_item import batch_for, EXAMPLE, FLAT, make, many, PRIORITISED_FLAT, ROW_CODE


def filled_flat(kind, adds=12, steps=3):
    buffer = make(kind)
    state = buffer.init(EXAMPLE)
    rng = np.random.default_rng(1)
    for i in range(adds):
        state = buffer.add(state, batch_for(kind, True, True, steps, i * steps, rng))
    return buffer, state


@pytest.mark.parametrize("kind", [FLAT, PRIORITISED_FLAT], ids=["flat", "prioritised_flat"])
def test_flat_samples_consecutive_steps_uniformly(kind):
    buffer, state = filled_flat(kind)
    capacity = 24 // 3
    sample = many(buffer, state, 2000)
    first = np.asarray(sample.experience.first["id"]).reshape(-1)
    second = np.asarray(sample.experience.second["id"]).reshape(-1)
    # The step after `first` in the same row, both stored: never across the write head.
    np.testing.assert_array_equal(second, first + 1)
    newest = 12 * 3 - 1
    assert np.all(first % ROW_CODE >= newest - capacity + 1) and np.all(second % ROW_CODE <= newest)
    # Uniform over the (rows x (capacity - 1)) stored pairs (equal priorities at first).
    pairs = [r * ROW_CODE + t for r in range(3) for t in range(newest - capacity + 1, newest)]
    counts = np.array([np.sum(first == p) for p in pairs])
    assert counts.sum() == first.size
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
