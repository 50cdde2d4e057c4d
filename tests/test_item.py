"""The item buffers, uniform and prioritised: the stored items, sampled uniformly."""

import numpy as np
import pytest
import scipy.stats

from .helpers.flat_item import batch_for, EXAMPLE, ITEM, make, many, PRIORITISED_ITEM, ROW_CODE


@pytest.mark.parametrize("kind", [ITEM, PRIORITISED_ITEM], ids=["item", "prioritised_item"])
def test_item_samples_stored_items_uniformly(kind):
    buffer = make(kind)
    state = buffer.init(EXAMPLE)
    rng = np.random.default_rng(2)
    for i in range(5):  # 5 adds of 3 x 4 items: 60 items through 24 slots
        state = buffer.add(state, batch_for(kind, True, True, 4, 4 * i, rng))
    sample = many(buffer, state, 2000)
    ids = np.asarray(sample.experience["id"]).reshape(-1)
    assert sample.experience["obs"].shape == (2000, 5, 2)
    # Items are stored b-major: the last add's 12 items and the 12 before them.
    stored = sorted(
        r * ROW_CODE + t for i in (3, 4) for r in range(3) for t in range(4 * i, 4 * i + 4)
    )
    assert sorted(set(ids.tolist())) == stored
    counts = np.array([np.sum(ids == s) for s in stored])
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
