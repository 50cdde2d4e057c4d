"""The mixer: Flashbax's counts, each buffer drawing only its share, mixture probabilities,
priorities routed back to their buffers, clear errors."""

import re
import warnings

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats

import eqx_replay

from .helpers import tree_allclose


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import flashbax


EXAMPLE = {"id": jnp.int32(0)}


def flat(make=eqx_replay.make_flat_buffer, **overrides):
    config = dict(max_length=32, min_length=4, sample_batch_size=8, add_batch_size=2)
    config.update(overrides)
    return make(**config)


def filled(buffer, base, adds=6):
    """A state whose steps have ids `base + 10 * row + time`."""
    state = buffer.init(EXAMPLE)
    for t in range(adds):
        ids = base + 10 * jnp.arange(2, dtype=jnp.int32) + t
        state = buffer.add(state, {"id": ids})
    return state


@pytest.mark.parametrize(
    "size,proportions",
    [
        (10, [1, 2]),
        (7, [0.5, 0.5]),
        (100, [1, 1, 1]),
        (9, [3, 0, 1]),
        (1, [1, 1]),
        (13, [0.1, 0.7, 0.2]),
    ],
)
def test_counts_round_as_flashbax(size, proportions):
    buffers = [flat(sample_batch_size=1) for _ in proportions]
    mixer = eqx_replay.make_mixer(buffers, size, proportions)
    theirs = flashbax.make_mixer(
        [
            flashbax.make_flat_buffer(
                max_length=32, min_length=4, sample_batch_size=1, add_batch_size=2
            )
        ]
        * len(proportions),
        size,
        proportions,
    )
    assert list(mixer.counts) == list(theirs.sample.keywords["prop_batch_sizes"])  # pyright: ignore[reportFunctionMemberAccess] # a partial
    assert sum(mixer.counts) == size


def test_samples_are_concatenated_in_buffer_order_and_each_buffer_draws_its_share(monkeypatch):
    first, second = flat(), flat(max_length=30)  # a configuration of its own: traced anew
    mixer = eqx_replay.make_mixer([first, second], 10, [1, 4])
    assert mixer.counts == (2, 8)
    drawn = []
    original = eqx_replay.FlatBuffer._draw

    def spy(self, where, state, key, count):
        drawn.append(count)
        return original(self, where, state, key, count)

    monkeypatch.setattr(eqx_replay.FlatBuffer, "_draw", spy)
    states = [filled(first, 0), filled(second, 1000)]
    sample = mixer.sample(states, jr.key(0))
    assert drawn == [2, 8]  # only its share, not a full batch to slice
    ids = np.asarray(sample.experience.first["id"])
    assert ids.shape == (10,) and np.all(ids[:2] < 1000) and np.all(ids[2:] >= 1000)
    np.testing.assert_array_equal(np.asarray(sample.experience.second["id"]), ids + 1)
    assert bool(mixer.can_sample(states))
    assert not bool(mixer.can_sample([states[0], second.init(EXAMPLE)]))


def test_prioritised_probabilities_are_the_mixtures():
    make = eqx_replay.make_prioritised_item_buffer
    buffers = [make(max_length=6, min_length=1, sample_batch_size=4, priority_exponent=1.0)] * 2
    mixer = eqx_replay.make_mixer(buffers, 10, [3, 2])
    assert mixer.counts == (6, 4)
    states = []
    for base, priorities in ((0, [1.0, 2.0, 3.0]), (100, [5.0, 5.0, 10.0])):
        state = buffers[0].init(EXAMPLE)
        for i in range(3):
            state = buffers[0].add(state, {"id": jnp.int32(base + i)})
        # Item i holds its first window: its handle is i.
        state = buffers[0].set_priorities(state, jnp.arange(3), jnp.asarray(priorities))
        states.append(state)
    within = {0: 1 / 6, 1: 2 / 6, 2: 3 / 6, 100: 0.25, 101: 0.25, 102: 0.5}
    mixture = {i: p * (0.6 if i < 100 else 0.4) for i, p in within.items()}
    assert sum(mixture.values()) == pytest.approx(1.0)
    keys = jr.split(jr.key(1), 3000)
    samples = jax.jit(jax.vmap(mixer.sample, in_axes=(None, 0)))(states, keys)
    ids = np.asarray(samples.experience["id"]).reshape(-1)
    probabilities = np.asarray(samples.probabilities).reshape(-1)
    for i, p in mixture.items():
        np.testing.assert_allclose(probabilities[ids == i], p, rtol=1e-5)
    counts = np.array([np.sum(ids == i) for i in mixture])
    expected = np.array(list(mixture.values())) * ids.size
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3
    # So importance weights compare items across buffers as the mixture drew them.
    weights = eqx_replay.importance_weights(samples.probabilities[0], 1.0)
    assert float(weights.min()) > 0 and float(weights.max()) == 1.0


def test_set_priorities_routes_each_slice_to_its_buffer():
    make = eqx_replay.make_prioritised_flat_buffer
    buffers = [flat(make), flat(make, max_length=34)]
    mixer = eqx_replay.make_mixer(buffers, 6, [1, 1])
    states = [filled(buffers[0], 0), filled(buffers[1], 1000)]
    sample = mixer.sample(states, jr.key(2))
    priorities = jnp.arange(1.0, 7.0)
    # What each buffer's own `set_priorities` makes of its slice, on copies of the states.
    copies = [jax.tree.map(jnp.copy, s) for s in states]
    expected = [
        buffers[0].set_priorities(copies[0], sample.indices[:3], priorities[:3]),
        buffers[1].set_priorities(copies[1], sample.indices[3:], priorities[3:]),
    ]
    states = mixer.set_priorities(states, sample.indices, priorities)
    assert len(states) == 2
    for got, want in zip(states, expected):
        assert tree_allclose(jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, want))


def test_one_state_given_twice_to_set_priorities_is_named_and_left_intact():
    # A buffer mixed with itself, its one state passed for both entries: the in-place
    # update of each entry cannot take one array twice.
    buffer = flat(eqx_replay.make_prioritised_flat_buffer)
    mixer = eqx_replay.make_mixer([buffer, buffer], 6, [1, 1])
    state = filled(buffer, 0)
    kept = jax.tree.map(np.array, state)
    sample = mixer.sample([state, state], jr.key(2))
    message = (
        r"`Mixer.set_priorities`: states\[0\]\.experience\['id'\] and "
        r"states\[1\]\.experience\['id'\] are one array: .* Give each entry a state of its own"
    )
    with pytest.raises(ValueError, match=message):
        mixer.set_priorities([state, state], sample.indices, jnp.ones(6))
    assert tree_allclose(jax.tree.map(np.asarray, state), kept)
    # Two states of the one buffer are fine.
    other = filled(buffer, 0)
    mixer.set_priorities([state, other], sample.indices, jnp.ones(6))


def test_mixer_under_jit_and_scan():
    buffers = [flat(), flat()]
    mixer = eqx_replay.make_mixer(buffers, 8, [1, 1])
    states = [filled(buffers[0], 0), filled(buffers[1], 1000)]

    @jax.jit
    def loop(states, keys):
        return jax.lax.scan(
            lambda s, k: (s, mixer.sample(s, k).experience.first["id"]), states, keys
        )

    _, ids = loop(states, jr.split(jr.key(3), 5))
    assert ids.shape == (5, 8)
    assert np.all(np.asarray(ids[:, :4]) < 1000) and np.all(np.asarray(ids[:, 4:]) >= 1000)


def test_bad_mixers_and_calls_are_named():
    uniform, prioritised = flat(), flat(eqx_replay.make_prioritised_flat_buffer)
    queue = eqx_replay.make_trajectory_queue(
        max_length_time_axis=8, add_batch_size=2, add_sequence_length=2, sample_sequence_length=2
    )
    cases = [
        (
            lambda: eqx_replay.make_mixer([uniform, prioritised], 4, [1, 1]),
            TypeError,
            "`buffers` must be of one kind: buffers[0] is a FlatBuffer, "
            "buffers[1] a PrioritisedFlatBuffer",
        ),
        (
            lambda: eqx_replay.make_mixer([queue], 4, [1]),  # pyright: ignore[reportArgumentType] # the point
            TypeError,
            "`buffers[0]` is a TrajectoryQueue; a mixer samples buffers that take a key",
        ),
        (
            lambda: eqx_replay.make_mixer([uniform, uniform], 4, [1]),
            ValueError,
            "`proportions` must be a list or tuple of 2 numbers, one per buffer; got [1]",
        ),
        (
            lambda: eqx_replay.make_mixer([uniform, uniform], 4, [1, -1]),
            ValueError,
            "`proportions[1]` must be finite and >= 0; got -1",
        ),
        (
            lambda: eqx_replay.make_mixer([uniform, uniform], 4, [0, 0]),
            ValueError,
            "`proportions` must not all be zero",
        ),
        (lambda: eqx_replay.make_mixer([], 4, []), TypeError, "`buffers` must be a non-empty"),
        (
            lambda: eqx_replay.make_mixer([uniform], 0, [1]),
            ValueError,
            "`sample_batch_size` must be >= 1; got 0",
        ),
    ]
    for make, error, message in cases:
        with pytest.raises((error, TypeError)) as info:
            make()
        text = str(info.value)
        if "Type-check error" not in text:  # else this run's import hook spoke first
            assert isinstance(info.value, error) and message in text, text
    mixer = eqx_replay.make_mixer([uniform, uniform], 4, [1, 1])
    state = filled(uniform, 0)
    with pytest.raises(
        TypeError,
        match=re.escape(
            "`Mixer.sample`: `states` must be a list or tuple of 2 states, one per buffer in "
            "order; got 1 states"
        ),
    ):
        mixer.sample([state], jr.key(0))
    with pytest.raises(
        TypeError,
        match=re.escape(
            "`Mixer.set_priorities`: the buffers are FlatBuffers, which have no priorities"
        ),
    ):
        mixer.set_priorities([state, state], jnp.arange(4), jnp.ones(4))
    long_windows = eqx_replay.make_trajectory_buffer(
        add_batch_size=2,
        sample_batch_size=4,
        sample_sequence_length=3,
        period=1,
        min_length_time_axis=3,
        max_length_time_axis=8,
    )
    short_windows = eqx_replay.make_trajectory_buffer(
        add_batch_size=2,
        sample_batch_size=4,
        sample_sequence_length=2,
        period=1,
        min_length_time_axis=3,
        max_length_time_axis=8,
    )
    mixed = eqx_replay.make_mixer([long_windows, short_windows], 4, [1, 1])
    states = [
        b.add(b.init(EXAMPLE), {"id": jnp.zeros((2, 4), jnp.int32)})
        for b in (long_windows, short_windows)
    ]
    with pytest.raises(
        ValueError,
        match=re.escape("`Mixer.sample`: the samples of buffer 0 and buffer 1 do not concatenate"),
    ):
        mixed.sample(states, jr.key(0))


def test_a_mixed_sample_is_poisoned_unless_every_buffer_can_be_sampled():
    buffer = flat()
    mixer = eqx_replay.make_mixer([buffer, buffer], 6, [1, 1])
    ready, empty = filled(buffer, 0), buffer.init(EXAMPLE)
    assert not bool(mixer.can_sample([ready, empty]))
    sample = mixer.sample([ready, empty], jr.key(0))
    assert np.all(np.asarray(sample.experience.first["id"]) == np.iinfo(np.int32).max)
    sample = mixer.sample([ready, ready], jr.key(0))
    assert np.all(np.asarray(sample.experience.first["id"]) < 100)
