"""The compiled code has the shape the performance depends on (no timing here: the speed
itself is measured side by side with Flashbax in `benchmarks/`)."""

import re

import jax
import jax.numpy as jnp
import pytest

import eqx_replay


ROWS, CAPACITY = 16, 1024
EXAMPLE = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
STORAGE_SHAPES = ["f32[16,1024,64]", "f32[16,1024]", "pred[16,1024]"]


def buffer_and_state():
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=8,
        sample_sequence_length=4,
        period=1,
        min_length_time_axis=4,
        max_length_time_axis=CAPACITY,
    )
    return buffer, buffer.init(EXAMPLE)


def compiled_add(steps):
    buffer, state = buffer_and_state()
    batch = jax.tree.map(lambda x: jnp.zeros((ROWS, steps, *x.shape), x.dtype), EXAMPLE)
    return buffer.add.lower(state, batch).compile().as_text()  # pyright: ignore[reportFunctionMemberAccess] # a jitted function


def storage_copies(hlo):
    return [
        line
        for line in hlo.splitlines()
        if " copy(" in line
        and any(line.split("=", 1)[-1].strip().startswith(s) for s in STORAGE_SHAPES)
    ]


@pytest.mark.parametrize("steps,updates_per_leaf", [(1, 1), (8, 3), (CAPACITY // 2 + 1, 3)])
def test_add_writes_slices_in_place(steps, updates_per_leaf):
    hlo = compiled_add(steps)
    assert "scatter" not in hlo
    # One slice write on the path that does not wrap, two on the one that does (t > 1).
    assert len(re.findall(r"dynamic-update-slice\(", hlo)) == updates_per_leaf * len(EXAMPLE)
    assert storage_copies(hlo) == []


@pytest.mark.parametrize(
    "make,kwargs",
    [
        (eqx_replay.make_prioritised_trajectory_buffer, {}),
        (
            eqx_replay.make_trajectory_buffer,
            dict(episode_end=lambda step: step["done"], boundary="strict"),
        ),
    ],
)
@pytest.mark.parametrize("period", [1, 3])
def test_sum_tree_add_of_one_step_writes_slices_in_place(make, kwargs, period):
    # Items are numbered column by column, so the windows one step completes and the
    # windows it overwrites are two runs of consecutive items: slices, not scatters.
    buffer = make(
        add_batch_size=ROWS,
        sample_batch_size=8,
        sample_sequence_length=4,
        period=period,
        min_length_time_axis=4,
        max_length_time_axis=CAPACITY // period * period,
        **kwargs,
    )
    state = buffer.init(EXAMPLE)
    batch = jax.tree.map(lambda x: jnp.zeros((ROWS, 1, *x.shape), x.dtype), EXAMPLE)
    hlo = buffer.add.lower(state, batch).compile().as_text()  # pyright: ignore[reportFunctionMemberAccess] # a jitted function
    assert "scatter" not in hlo
    assert "sort" not in hlo
    entry = hlo[hlo.index("ENTRY") :]
    # No copy of anything bigger than a scalar: every array is updated in place.
    assert re.findall(r"= \w+\[\d[^\]]*\]\S* copy\(", entry) == []


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
