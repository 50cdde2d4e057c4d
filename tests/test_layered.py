"""`_layered`: what the flat and item buffers, uniform and prioritised, share: Flashbax's
states element for element in every add mode, prioritised samples in proportion, poison,
clear errors, transforms, in-place writes, no retracing."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats

import eqx_replay
import eqx_replay._ring as ring

from .helpers import tree_allclose
from .helpers.flat_item import (
    batch_for,
    EXAMPLE,
    FLAT,
    ITEM,
    KINDS,
    make,
    make_both,
    many,
    MODES,
    PRIORITISED_FLAT,
    PRIORITISED_ITEM,
)


@pytest.mark.parametrize("batches,sequences", MODES)
@pytest.mark.parametrize("kind", KINDS, ids=[k[0] for k in KINDS])
def test_same_states_as_flashbax(kind, batches, sequences):
    ours, theirs = make_both(kind, batches, sequences)
    state, fstate = ours.init(EXAMPLE), theirs.init(EXAMPLE)
    rng = np.random.default_rng(0)
    time = 0
    for steps in (3, 1, 5, 4, 2, 6, 3):
        batch = batch_for(kind, batches, sequences, steps, time, rng)
        time += steps if sequences else 1
        state, fstate = ours.add(state, batch), theirs.add(fstate, batch)
        for name in EXAMPLE:
            np.testing.assert_array_equal(state.experience[name], fstate.experience[name])
        assert int(state.current_index) == int(fstate.current_index)
        assert bool(state.is_full) == bool(fstate.is_full)
        assert bool(ours.can_sample(state)) == bool(theirs.can_sample(fstate))


@pytest.mark.parametrize("kind", [PRIORITISED_FLAT, PRIORITISED_ITEM], ids=["flat", "item"])
def test_prioritised_kinds_sample_in_proportion_to_priority(kind):
    buffer = make(kind, priority_exponent=0.5)
    state = buffer.init(EXAMPLE)
    rng = np.random.default_rng(3)
    for i in range(4):
        state = buffer.add(state, batch_for(kind, True, True, 2, 2 * i, rng))
    # Every valid item's handle (all priorities are equal so far), then a priority each.
    handles = np.unique(np.asarray(many(buffer, state, 500).indices))
    priorities = np.arange(1, len(handles) + 1, dtype=np.float32) ** 2
    state = buffer.set_priorities(state, jnp.asarray(handles), jnp.asarray(priorities))
    draws = many(buffer, state, 3000)
    drawn = np.asarray(draws.indices).reshape(-1)
    assert set(np.unique(drawn)) <= set(handles.tolist())
    expected = np.sqrt(priorities) / np.sqrt(priorities).sum()
    probabilities = np.asarray(draws.probabilities).reshape(-1)
    for handle, p in zip(handles, expected):
        np.testing.assert_allclose(probabilities[drawn == handle], p, rtol=1e-5)
    counts = np.array([np.sum(drawn == h) for h in handles])
    assert scipy.stats.chisquare(counts, expected * counts.sum()).pvalue > 1e-3


@pytest.mark.parametrize("kind", KINDS, ids=[k[0] for k in KINDS])
def test_sampling_too_early_gives_poison(kind):
    buffer = make(kind, min_length=20)
    state = buffer.add(
        buffer.init(EXAMPLE), batch_for(kind, True, True, 2, 0, np.random.default_rng())
    )
    assert not bool(buffer.can_sample(state))
    sample = buffer.sample(state, jr.key(0))
    obs = sample.experience.first["obs"] if "flat" in kind[0] else sample.experience["obs"]
    assert bool(jnp.all(jnp.isnan(obs)))


@pytest.mark.parametrize(
    "kind,overrides,error,message",
    [
        (
            FLAT,
            dict(sample_batch_size=25),
            ValueError,
            "`sample_batch_size` (25) must be <= `max_length` (24)",
        ),
        (
            FLAT,
            dict(max_length=5),
            ValueError,
            "`max_length` (5) must hold at least 2 steps per row, a pair: "
            "`max_length // add_batch_size` is 5 // 3 = 1",
        ),
        (
            FLAT,
            dict(min_length=24),
            ValueError,
            "`min_length` (24) needs `min_length // add_batch_size + 1` = 9 steps per row, "
            "more than the 8",
        ),
        (FLAT, dict(add_batch_size=0), ValueError, "`add_batch_size` must be >= 1; got 0"),
        (FLAT, dict(add_sequences=1), TypeError, "`add_sequences` must be a bool; got int 1"),
        (
            ITEM,
            dict(sample_batch_size=30),
            ValueError,
            "`sample_batch_size` (30) must be <= `max_length` (24)",
        ),
        (ITEM, dict(min_length=25), ValueError, "`min_length` (25) must be <= `max_length` (24)"),
        (ITEM, dict(add_batches="yes"), TypeError, "`add_batches` must be a bool; got str 'yes'"),
        (
            PRIORITISED_FLAT,
            dict(priority_exponent=1.5),
            ValueError,
            "`priority_exponent` must be in [0, 1]; got 1.5",
        ),
        (
            PRIORITISED_ITEM,
            dict(priority_exponent=-0.5),
            ValueError,
            "`priority_exponent` must be in [0, 1]; got -0.5",
        ),
    ],
)
def test_configuration_errors_name_the_argument(kind, overrides, error, message):
    with pytest.raises((error, TypeError)) as info:
        make(kind, **overrides)
    text = str(info.value)
    if "Type-check error" in text:  # this run's import hook checks the annotation first
        assert f"parameter '{next(iter(overrides))}'" in text
    else:
        assert isinstance(info.value, error) and message in text


@pytest.mark.parametrize(
    "kind,batches,sequences,batch,message",
    [
        (
            FLAT,
            False,
            False,
            {"obs": jnp.zeros(3), "id": jnp.int32(0)},
            "`FlatBuffer.add`: leaf ['obs'] has shape (3,); expected (2,)",
        ),
        (
            FLAT,
            True,
            False,
            {"obs": jnp.zeros((2, 2)), "id": jnp.zeros(2, jnp.int32)},
            "`FlatBuffer.add`: leaf ['id'] has shape (2,); expected (3,)",
        ),
        (
            FLAT,
            True,
            True,
            {"obs": jnp.zeros((3, 9, 2)), "id": jnp.zeros((3, 9), jnp.int32)},
            "leaf ['id'] has shape (3, 9); expected (3, t) with 1 <= t <= 8",
        ),
        (
            FLAT,
            False,
            True,
            {"obs": jnp.zeros((4, 2)), "id": jnp.zeros(5, jnp.int32)},
            "`FlatBuffer.add`: leaves disagree on t: ['id'] has 5, ['obs'] has 4",
        ),
        (
            ITEM,
            True,
            True,
            {"obs": jnp.zeros((5, 5, 2)), "id": jnp.zeros((5, 5), jnp.int32)},
            "`ItemBuffer.add`: the batch holds 5 x 5 = 25 items; at most `max_length` (24)",
        ),
        (
            PRIORITISED_ITEM,
            False,
            False,
            {"obs": jnp.zeros(2, jnp.int32), "id": jnp.int32(0)},
            "`PrioritisedItemBuffer.add`: leaf ['obs'] has dtype int32; expected float32",
        ),
    ],
)
def test_bad_batches_name_the_call_and_leave_the_state(kind, batches, sequences, batch, message):
    buffer = make(kind, batches=batches, sequences=sequences)
    good = batch_for(kind, batches, sequences, 2, 0, np.random.default_rng())
    state = buffer.add(buffer.init(EXAMPLE), good)
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        buffer.add(state, batch)
    state = buffer.add(state, good)
    assert int(state.current_index) > 0


@pytest.mark.parametrize("kind", KINDS, ids=[k[0] for k in KINDS])
def test_transforms_and_no_retracing(kind):
    buffer = make(kind)
    rng = np.random.default_rng(4)
    batches = [batch_for(kind, True, True, 2, 2 * i, rng) for i in range(6)]
    expected = buffer.init(EXAMPLE)
    for b in batches:
        expected = buffer.add(expected, b)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *batches)

    @eqx.filter_jit
    def scan(state, stacked):
        return jax.lax.scan(lambda s, b: (buffer.add(s, b), buffer.can_sample(s)), state, stacked)

    state, _ = scan(buffer.init(EXAMPLE), stacked)
    assert tree_allclose(jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, expected))
    key = jr.key(5)
    assert tree_allclose(jax.jit(buffer.sample)(state, key), buffer.sample(state, key))
    # vmap over two independent buffers.
    states = jax.vmap(lambda _: buffer.init(EXAMPLE))(jnp.arange(2))
    for b in batches:
        states = jax.vmap(buffer.add)(states, jax.tree.map(lambda x: jnp.stack([x, x]), b))
    one = jax.tree.map(lambda x: x[1], states)
    assert tree_allclose(jax.tree.map(np.asarray, one), jax.tree.map(np.asarray, expected))
    samples = jax.vmap(buffer.sample)(states, jr.split(key, 2))
    assert jax.tree.leaves(samples)[0].shape[0] == 2
    # pmap over the two fake CPU devices.
    states = jax.pmap(lambda _: buffer.init(EXAMPLE))(jnp.arange(2))
    states = jax.pmap(buffer.add)(states, jax.tree.map(lambda x: jnp.stack([x, x]), batches[0]))
    assert int(states.current_index[0]) == int(states.current_index[1]) > 0


@pytest.mark.parametrize("kind", KINDS, ids=[k[0] for k in KINDS])
def test_add_of_one_transition_writes_in_place(kind):
    buffer = make(kind, batches=False, sequences=False, max_length=4096)
    state = buffer.init(EXAMPLE)
    one = batch_for(kind, False, False, 1, 0, np.random.default_rng())
    hlo = buffer.add.lower(state, one).compile().as_text()  # pyright: ignore[reportFunctionMemberAccess] # a jitted function
    assert "scatter" not in hlo
    storage = ["f32[1,4096,2]", "s32[1,4096]"]
    copies = [
        line
        for line in hlo.splitlines()
        if " copy(" in line and any(line.split("=", 1)[-1].strip().startswith(s) for s in storage)
    ]
    assert copies == []


@pytest.mark.parametrize("kind", KINDS, ids=[k[0] for k in KINDS])
def test_no_retracing(kind, monkeypatch):
    # A capacity no other test uses, so that the methods are traced here.
    buffer = make(kind, max_length=42)
    traced_add = eqx.debug.assert_max_traces(ring.advance, max_traces=1)
    # The flat buffers read their pairs with `read_each_step`, the item buffers with `read`
    # (which traces `read_each_step` too, for accelerators): each at most once.
    traced_read = eqx.debug.assert_max_traces(ring.read, max_traces=1)
    traced_each = eqx.debug.assert_max_traces(ring.read_each_step, max_traces=1)
    monkeypatch.setattr(ring, "advance", traced_add)
    monkeypatch.setattr(ring, "read", traced_read)
    monkeypatch.setattr(ring, "read_each_step", traced_each)
    state, rng = buffer.init(EXAMPLE), np.random.default_rng(6)
    for i in range(12):
        state = buffer.add(state, batch_for(kind, True, True, 2, 2 * i, rng))
        buffer.sample(state, jr.key(i))
    assert eqx.debug.get_num_traces(traced_add) == 1
    reads = eqx.debug.get_num_traces(traced_read) + eqx.debug.get_num_traces(traced_each)
    assert reads >= 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: eqx_replay.make_flat_buffer(16, 4, 2, add_batch_size=2),
        lambda: eqx_replay.make_prioritised_flat_buffer(16, 4, 2, add_batch_size=2),
        lambda: eqx_replay.make_item_buffer(16, 4, 2),
        lambda: eqx_replay.make_prioritised_item_buffer(16, 4, 2),
    ],
)
def test_dataclasses_replace_changes_the_configuration(make):
    """The docs' way to change a buffer's configuration works for every kind."""
    import dataclasses

    buffer = dataclasses.replace(make(), donate_state=False)
    assert not buffer.donate_state and not buffer.buffer.donate_state
    state = buffer.init({"x": jnp.zeros(2)})
    assert jax.tree.leaves(state)[0].shape[0] >= 1
