"""`SumTree`: exact in float32 however long it runs, never drawing an item of priority zero,
every item reachable, priorities clipped to what a leaf holds."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats

import eqx_replay
import eqx_replay._sum_tree as sum_tree
from eqx_replay._sum_tree import largest_leaf, priority_leaves, SMALLEST

from .helpers import check_tree
from .helpers.small_buffer import ITEMS


def test_sum_tree_stays_exact_and_never_samples_zero():
    # The note reports the same at 10**6 updates; 2 * 10**4 here keeps the suite fast.
    tree = eqx_replay.SumTree.zeros(1000)
    rng = np.random.default_rng(0)

    @jax.jit
    def update(tree, key):
        k1, k2, k3 = jax.random.split(key, 3)
        items = jax.random.randint(k1, (64,), 0, 1000)
        values = jax.random.uniform(k2, (64,)) * jnp.where(
            jax.random.uniform(k3, (64,)) < 0.3, 0, 1
        )
        return tree.set(items, values, jnp.ones(64, bool))

    def body(tree, key):
        return update(tree, key), None

    tree, _ = jax.lax.scan(
        body, tree, jax.random.split(jax.random.key(int(rng.integers(99))), 20_000)
    )
    check_tree(tree)
    leaves = np.asarray(tree.get(jnp.arange(1000)), np.float64)
    assert abs(float(tree.total()) - leaves.sum()) <= 1e-6 * leaves.sum()
    items, probabilities = tree.sample(jax.random.key(5), 100_000)
    assert (leaves[np.asarray(items)] > 0).all()
    np.testing.assert_allclose(
        np.asarray(probabilities), leaves[np.asarray(items)] / leaves.sum(), rtol=1e-5
    )


@pytest.mark.parametrize("num_leaves", [7, 32, 1000, 40_000])
def test_set_leaves_matches_set(num_leaves):
    # Runs of consecutive items anywhere, the last ones included, as `add` writes them.
    rng = np.random.default_rng(num_leaves)
    tree = eqx_replay.SumTree.zeros(num_leaves)
    for _ in range(12):
        size = int(rng.integers(1, min(num_leaves, 70) + 1))
        start = int(rng.choice([0, num_leaves - size, rng.integers(0, num_leaves - size + 1)]))
        values = jnp.asarray(rng.uniform(0, 2, size) * (rng.uniform(size=size) < 0.7))
        values = values.astype(jnp.float32)
        expected = tree.set(jnp.arange(start, start + size), values, jnp.ones(size, bool))
        tree = tree.set_leaves(jnp.array(start), values)
        np.testing.assert_array_equal(np.asarray(tree.nodes), np.asarray(expected.nodes))
        check_tree(tree)


def test_duplicate_indices_last_wins():
    tree = eqx_replay.SumTree.zeros(16)
    tree = tree.set(
        jnp.array([3, 5, 3, 3]),
        jnp.array([1.0, 2.0, 3.0, 4.0]),
        jnp.array([True, True, True, False]),
    )
    np.testing.assert_array_equal(np.asarray(tree.get(jnp.array([3, 5]))), [3.0, 2.0])
    assert float(tree.total()) == 5.0


def test_deep_tree_samples_in_proportion_and_never_zero():
    # 40,000 items: four levels of groups of 32; 50 positive items spread over them.
    rng = np.random.default_rng(1)
    items = rng.choice(40_000, 50, replace=False)
    values = rng.uniform(0.1, 3.0, 50).astype(np.float32)
    tree = eqx_replay.SumTree.zeros(40_000).set(
        jnp.asarray(items), jnp.asarray(values), jnp.ones(50, bool)
    )
    assert len(sum_tree._level_sizes(40_000)) == 4
    check_tree(tree)
    drawn, probabilities = jax.jit(lambda t, k: t.sample(k, 50_000))(tree, jax.random.key(2))
    drawn = np.asarray(drawn)
    assert set(drawn.tolist()) <= set(items.tolist())
    counts = np.array([(drawn == i).sum() for i in items])
    assert scipy.stats.chisquare(counts, values / values.sum() * len(drawn)).pvalue > 1e-6
    np.testing.assert_allclose(
        np.asarray(probabilities),
        np.asarray(tree.get(jnp.asarray(drawn))) / values.sum(),
        rtol=1e-5,
    )


def test_priority_leaves_are_exact_inside_the_range_and_clipped_outside():
    values = jnp.asarray([0.0, 1e-42, 1e-30, 0.5, 4.0, 1e30], jnp.float32)
    largest = largest_leaf(ITEMS)
    got = np.asarray(priority_leaves(values, 0.5, ITEMS))
    expected = np.sqrt(np.asarray(values, np.float64))
    # Inside [SMALLEST, largest] the value is `priority ** exponent`, a subnormal priority
    # included (its square root is a normal float).
    np.testing.assert_allclose(got[1:5], expected[1:5], rtol=1e-5)
    assert got[0] == 0 and got[5] == np.sqrt(1e30, dtype=np.float32)
    got = np.asarray(priority_leaves(values, 2.0, ITEMS))
    assert got[0] == 0 and got[1] == SMALLEST and got[2] == SMALLEST  # underflows
    assert got[3] == 0.25 and got[4] == 16 and got[5] == largest  # 1e60 overflows
    # With exponent 0 every positive priority is 1 and zero stays zero, as in Flashbax
    # (`where(p == 0, 0, p ** a)`), not `0 ** 0 = 1`.
    np.testing.assert_array_equal(
        np.asarray(priority_leaves(values, 0.0, ITEMS)), [0, 1, 1, 1, 1, 1]
    )


def test_every_item_of_a_tree_beyond_float32_resolution_is_reachable():
    """With more than 2**24 items a float32 draw over the whole total cannot name every item:
    before each level was drawn afresh, no odd item of the upper half was ever drawn."""
    items = 2**25
    sizes = sum_tree._level_sizes(items)
    levels = [np.zeros(sizes[0], np.float32)]
    levels[0][:items] = 1
    for size in sizes[1:]:
        sums = levels[-1].reshape(-1, sum_tree.FANOUT).sum(axis=1, dtype=np.float32)
        levels.append(np.pad(sums, (0, size - sums.size)))
    tree = eqx_replay.SumTree(jnp.asarray(np.concatenate(levels)), items)
    drawn, probabilities = jax.jit(lambda t, k: t.sample(k, 2**20))(tree, jr.key(0))
    drawn = np.asarray(drawn)
    upper = drawn[drawn >= items // 2]
    assert 0.45 < np.mean(upper % 2) < 0.55
    np.testing.assert_allclose(np.asarray(probabilities), 2.0**-25, rtol=1e-6)
