"""The trajectory buffer: against the numpy reference (states after every add, and sampled
windows), and the shape of its compiled add and sample (slices written in place, whole
windows gathered, no copy of the storage)."""

import collections
import re

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings

import eqx_replay

from .helpers import quiet
from .helpers.large_buffer import (
    buffer_and_state,
    CAPACITY,
    compiled_add,
    EXAMPLE,
    storage_copies,
)
from .reference import TrajectoryReference


ROW_CODE = 100_000  # a step's `step` leaf is `row * ROW_CODE + global time`
SAMPLES = 512
ROUNDS = 4


@st.composite
def configs(draw):
    rows = draw(st.integers(1, 3))
    capacity = draw(st.integers(1, 10))
    length = draw(st.integers(1, capacity))
    period = draw(st.integers(1, 4))
    min_length = draw(st.integers(0, capacity))
    adds = draw(st.lists(st.integers(1, capacity), min_size=1, max_size=6))
    use_max_size = draw(st.booleans())
    return rows, capacity, length, period, min_length, adds, use_max_size


def make_batch(rng, rows, start, steps):
    g = np.arange(start, start + steps)
    code = np.arange(rows)[:, None] * ROW_CODE + g[None, :]
    return {
        "step": jnp.asarray(code, jnp.int32),
        "obs": jnp.asarray(rng.normal(size=(rows, steps, 2)), jnp.float32),
    }


def check_samples(buffer, state, ref, keys):
    """Every window is valid; every valid window is drawn; frequencies are uniform."""
    counts = collections.Counter()
    offsets = np.arange(buffer.sample_sequence_length)
    for key in keys:
        sample = jax.device_get(buffer.sample(state, key).experience)
        assert sample["step"].shape == (
            buffer.sample_batch_size,
            buffer.sample_sequence_length,
        )
        assert sample["obs"].shape == (
            buffer.sample_batch_size,
            buffer.sample_sequence_length,
            2,
        )
        rows, starts = np.divmod(sample["step"][:, 0], ROW_CODE)
        times = starts[:, None] + offsets
        assert times.max() < ref.total
        np.testing.assert_array_equal(sample["step"], ref.history["step"][rows[:, None], times])
        np.testing.assert_array_equal(sample["obs"], ref.history["obs"][rows[:, None], times])
        counts.update(zip(rows.tolist(), starts.tolist()))
    valid = {(r, s) for r in range(ref.rows) for s in ref.window_starts()}
    assert set(counts) <= valid, set(counts) - valid
    assert set(counts) == valid, f"never drawn: {valid - set(counts)}"
    if len(valid) > 1:
        observed = [counts[w] for w in sorted(valid)]
        assert scipy.stats.chisquare(observed).pvalue > 1e-6


@settings(max_examples=300, deadline=None, derandomize=True)
@given(configs())
def test_matches_reference(config):
    rows, capacity, length, period, min_length, adds, use_max_size = config
    size = {"max_size": rows * capacity} if use_max_size else {"max_length_time_axis": capacity}
    with quiet():
        buffer = eqx_replay.make_trajectory_buffer(
            add_batch_size=rows,
            sample_batch_size=SAMPLES,
            sample_sequence_length=length,
            period=period,
            min_length_time_axis=min_length,
            **size,
        )
    assert buffer.max_length_time_axis == capacity
    example = {"step": jnp.int32(0), "obs": jnp.zeros(2, jnp.float32)}
    ref = TrajectoryReference(rows, capacity, length, period, min_length, example)
    state = buffer.init(example)
    rng = np.random.default_rng(len(adds))
    for steps in adds:
        batch = make_batch(rng, rows, ref.total, steps)
        state = buffer.add(state, batch)
        ref.add(batch)
        experience, current_index, is_full = ref.state()
        for name in experience:
            np.testing.assert_array_equal(state.experience[name], experience[name])
        assert int(state.current_index) == current_index
        assert bool(state.is_full) == is_full
        assert bool(buffer.can_sample(state)) == ref.can_sample()
    if ref.can_sample():
        check_samples(buffer, state, ref, jax.random.split(jax.random.key(ref.total), ROUNDS))
    else:
        sample = buffer.sample(state, jax.random.key(0)).experience
        assert bool(jnp.all(sample["step"] == jnp.iinfo(jnp.int32).max))
        assert bool(jnp.all(jnp.isnan(sample["obs"])))


@pytest.mark.parametrize(
    "capacity,length,period,adds",
    [
        (12, 4, 1, [5, 3]),  # not yet full
        (12, 4, 3, [7, 9]),  # wrapped, period grid counted from the write head
        (10, 3, 2, [10, 10, 4]),  # several laps
        (9, 9, 1, [4, 7]),  # a single window spanning the whole ring
    ],
)
def test_uniform_over_windows_chi_square(capacity, length, period, adds):
    rows = 3
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=rows,
        sample_batch_size=4096,
        sample_sequence_length=length,
        period=period,
        min_length_time_axis=length,
        max_length_time_axis=capacity,
    )
    example = {"step": jnp.int32(0), "obs": jnp.zeros(2, jnp.float32)}
    ref = TrajectoryReference(rows, capacity, length, period, length, example)
    state = buffer.init(example)
    rng = np.random.default_rng(0)
    for steps in adds:
        batch = make_batch(rng, rows, ref.total, steps)
        state = buffer.add(state, batch)
        ref.add(batch)
    check_samples(buffer, state, ref, jax.random.split(jax.random.key(1), 5))


def test_windows_never_cross_the_write_head():
    # After 13 steps on a ring of 8 the write head sits at 5: physical 4 holds the newest
    # step and 5 the oldest, so no window may contain 4 followed by 5.
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=1,
        sample_batch_size=2048,
        sample_sequence_length=3,
        period=1,
        min_length_time_axis=3,
        max_length_time_axis=8,
    )
    state = buffer.init({"t": jnp.int32(0)})
    state = buffer.add(state, {"t": jnp.arange(8, dtype=jnp.int32)[None]})
    state = buffer.add(state, {"t": jnp.arange(8, 13, dtype=jnp.int32)[None]})
    windows = np.asarray(buffer.sample(state, jax.random.key(0)).experience["t"])
    np.testing.assert_array_equal(np.diff(windows, axis=1), 1)
    assert set(windows[:, 0]) == set(range(5, 11))


@pytest.mark.parametrize("steps,updates_per_leaf", [(1, 1), (8, 3), (CAPACITY // 2 + 1, 3)])
def test_add_writes_slices_in_place(steps, updates_per_leaf):
    hlo = compiled_add(steps)
    assert "scatter" not in hlo
    # One slice write on the path that does not wrap, two on the one that does (t > 1).
    assert len(re.findall(r"dynamic-update-slice\(", hlo)) == updates_per_leaf * len(EXAMPLE)
    assert storage_copies(hlo) == []


def test_donated_add_aliases_the_state():
    hlo = compiled_add(1)
    header = hlo.splitlines()[0]
    # Every storage leaf, the write head and the fullness flag are updated in place.
    assert header.count("may-alias") + header.count("must-alias") == len(EXAMPLE) + 2


def test_sample_has_no_host_callback():
    buffer, state = buffer_and_state()
    hlo = buffer.sample.lower(state, jax.random.key(0)).compile().as_text()  # pyright: ignore[reportFunctionMemberAccess] # a jitted function
    assert "custom-call(" not in hlo
    assert "scatter" not in hlo


def test_sample_gathers_whole_windows_without_copying_the_storage():
    buffer, state = buffer_and_state()
    hlo = buffer.sample.lower(state, jax.random.key(0)).compile().as_text()  # pyright: ignore[reportFunctionMemberAccess] # a jitted function
    # One gather per leaf reads whole windows of `sample_sequence_length` steps, and the
    # gather that re-reads the rare wrapping windows runs inside a loop.
    windows = re.findall(r"slice_sizes=\{1,4(?:,64)?\}", hlo)
    assert len(windows) == len(EXAMPLE)
    assert storage_copies(hlo) == []
