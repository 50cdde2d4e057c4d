"""The exact bounded integers behind `sample`."""

from collections import Counter

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings

from eqx_replay._random import (
    below,
    below_flagged,
    bits,
    count_blocks,
    fold_in,
    nth_true,
    ranked,
    scale,
    split,
    uniform,
    words as two_words,
)


words = st.integers(0, 2**32 - 1)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(words, words), min_size=1, max_size=20), words)
def test_scale_is_the_exact_floor_of_a_64_bit_fraction(pairs, n):
    high = jnp.array([p[0] for p in pairs], jnp.uint32)
    low = jnp.array([p[1] for p in pairs], jnp.uint32)
    got = np.asarray(jax.jit(scale)(high, low, jnp.uint32(n)))
    expected = [((h << 32) + lo) * n >> 64 for h, lo in pairs]
    assert got.tolist() == expected


def test_below_is_uniform_and_independent():
    window, row = jax.jit(lambda key: below(key, (60_000,), (jnp.int32(10), 6)))(jax.random.key(3))
    window, row = np.asarray(window), np.asarray(row)
    assert window.min() == 0 and window.max() == 9 and row.min() == 0 and row.max() == 5
    assert scipy.stats.chisquare(np.bincount(window)).pvalue > 1e-4
    assert scipy.stats.chisquare(np.bincount(row)).pvalue > 1e-4
    pairs = np.bincount(window * 6 + row, minlength=60)
    assert scipy.stats.chisquare(pairs).pvalue > 1e-4


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_two_words_from_one_hash_are_uniform_and_independent(impl):
    # `sample_future` draws its tries and offsets from both outputs of one Threefry hash:
    # each word's top 4 bits, and the two words' jointly, are uniform.
    high, low = jax.jit(two_words, static_argnums=1)(jax.random.key(5, impl=impl), (3, 20_000))
    high, low = np.asarray(high).reshape(-1) >> 28, np.asarray(low).reshape(-1) >> 28
    assert scipy.stats.chisquare(np.bincount(high, minlength=16)).pvalue > 1e-4
    assert scipy.stats.chisquare(np.bincount(low, minlength=16)).pvalue > 1e-4
    assert scipy.stats.chisquare(np.bincount(high * 16 + low, minlength=256)).pvalue > 1e-4
    # Successive elements are not the same words.
    assert len(set(zip(high.tolist()[:64], low.tolist()[:64]))) > 40


def test_zero_bound_gives_zeros():
    (out,) = below(jax.random.key(0), (5,), (jnp.int32(0),))
    assert out.tolist() == [0] * 5


KEYS = {
    "key": jax.random.key(7),
    "PRNGKey": jax.random.PRNGKey(3),
    "split key": jax.random.split(jax.random.key(2))[1],
    "rbg key": jax.random.key(1, impl="rbg"),
}


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS.keys())
@pytest.mark.parametrize("shape", [(1,), (5,), (2, 2, 256), (3, 4, 5)])
def test_bits_and_uniform_are_jax_random_bits_and_uniform(key, shape):
    assert np.array_equal(jax.jit(bits, static_argnums=1)(key, shape), jax.random.bits(key, shape))
    assert np.array_equal(
        jax.jit(uniform, static_argnums=1)(key, shape), jax.random.uniform(key, shape)
    )


def test_bits_under_vmap():
    keys = jax.random.split(jax.random.key(0), 4)
    ours = jax.vmap(lambda k: bits(k, (7,)))(keys)
    assert np.array_equal(ours, jax.vmap(lambda k: jax.random.bits(k, (7,)))(keys))


def test_bits_has_no_loop():
    hlo = jax.jit(lambda k: bits(k, (2, 2, 256))).lower(jax.random.key(0)).compile().as_text()
    assert hlo is not None and " while(" not in hlo


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS.keys())
@pytest.mark.parametrize("data", [0, 1, 7, 1000, 2**31 - 1])
def test_fold_in_is_jax_random_fold_in(key, data):
    ours, theirs = jax.jit(fold_in)(key, jnp.int32(data)), jax.random.fold_in(key, data)
    if jnp.issubdtype(ours.dtype, jax.dtypes.prng_key):
        ours, theirs = jax.random.key_data(ours), jax.random.key_data(theirs)
    assert np.array_equal(ours, theirs)


def test_fold_in_has_no_loop():
    hlo = jax.jit(fold_in).lower(jax.random.key(0), jnp.int32(3)).compile().as_text()
    assert hlo is not None and " while(" not in hlo


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS.keys())
@pytest.mark.parametrize("num", [1, 2, 3, 8])
def test_split_is_jax_random_split(key, num):
    ours, theirs = jax.jit(split, static_argnums=1)(key, num), jax.random.split(key, num)
    if jnp.issubdtype(ours.dtype, jax.dtypes.prng_key):
        ours, theirs = jax.random.key_data(ours), jax.random.key_data(theirs)
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_split_has_no_loop():
    hlo = jax.jit(split, static_argnums=1).lower(jax.random.key(0), 3).compile().as_text()
    assert hlo is not None and " while(" not in hlo


def test_below_flagged_draws_uniformly_among_the_flagged_cells() -> None:
    flags = np.random.default_rng(0).random((3, 300)) < 0.05  # 300: blocks of 128 padded
    rows, columns, total = jax.jit(below_flagged, static_argnums=2)(
        jax.random.key(0), jnp.asarray(flags), 20_000
    )
    assert int(total) == flags.sum()
    drawn = Counter(zip(np.asarray(rows).tolist(), np.asarray(columns).tolist()))
    assert set(drawn) == set(zip(*np.nonzero(flags)))
    assert scipy.stats.chisquare(list(drawn.values())).pvalue > 1e-4


def test_blocks_ranks_and_places_are_numpys() -> None:
    # The three steps `sample_episodes` and `below_flagged` find an item of a given rank
    # by: the flags counted by blocks, the block of a rank, its place in the block.
    rng = np.random.default_rng(0)
    for p in [0.0, 0.01, 0.3, 1.0]:
        blocks = rng.random((200, 128)) < p
        np.testing.assert_array_equal(jax.jit(count_blocks)(blocks), blocks.sum(axis=1))
    locate = jax.jit(lambda counts, rank: ranked(counts).locate(rank))
    for n in [1, 31, 32, 33, 100, 782, 7813]:
        counts = (rng.integers(0, 5, n) * (rng.random(n) < 0.5)).astype(np.int32)
        counts[-1] += 1
        rank = rng.integers(0, counts.sum(), 300).astype(np.int32)
        running = np.cumsum(counts)
        block = np.searchsorted(running, rank, side="right")
        got_block, got_inside = locate(jnp.asarray(counts), jnp.asarray(rank))
        np.testing.assert_array_equal(got_block, block)
        np.testing.assert_array_equal(got_inside, rank - (running[block] - counts[block]))
        assert int(ranked(jnp.asarray(counts)).total) == counts.sum()
    for p in [0.01, 0.2, 0.9, 1.0]:
        flags = rng.random((500, 128)) < p
        flags[np.arange(500), rng.integers(0, 128, 500)] = True
        n = (rng.random(500) * flags.sum(axis=1)).astype(np.int32)
        expected = [np.flatnonzero(row)[k] for row, k in zip(flags, n)]
        np.testing.assert_array_equal(jax.jit(nth_true)(flags, jnp.asarray(n)), expected)
