"""Element-for-element agreement with Flashbax 0.1.3 on the same adds.

Samples are drawn from the same distribution (see `test_trajectory.py`) but not from the same
random bits: `sample` draws all its indices with one `jax.random.bits` call.
"""

import warnings

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings

import eqx_replay

from .helpers import quiet


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import flashbax


@st.composite
def scenarios(draw):
    rows = draw(st.integers(1, 3))
    capacity = draw(st.integers(1, 9))
    length = draw(st.integers(1, capacity))
    config = dict(
        add_batch_size=rows,
        sample_batch_size=4,
        sample_sequence_length=length,
        period=draw(st.integers(1, 3)),
        min_length_time_axis=draw(st.integers(length, capacity)),
        max_length_time_axis=capacity,
    )
    adds = draw(st.lists(st.integers(1, capacity), min_size=1, max_size=5))
    return config, adds


@settings(max_examples=150, deadline=None, derandomize=True)
@given(scenarios())
def test_same_states_as_flashbax(scenario):
    config, adds = scenario
    with quiet():
        ours = eqx_replay.make_trajectory_buffer(**config)
        theirs = flashbax.make_trajectory_buffer(**config)
    example = {"obs": jnp.zeros(2, jnp.float32), "id": jnp.int32(0)}
    state, fstate = ours.init(example), theirs.init(example)
    rng = np.random.default_rng(sum(adds))
    for i, steps in enumerate(adds):
        rows = config["add_batch_size"]
        batch = {
            "obs": jnp.asarray(rng.normal(size=(rows, steps, 2)), jnp.float32),
            "id": jnp.full((rows, steps), i, jnp.int32),
        }
        state, fstate = ours.add(state, batch), theirs.add(fstate, batch)
        for name in example:
            np.testing.assert_array_equal(state.experience[name], fstate.experience[name])
        assert int(state.current_index) == int(fstate.current_index)
        assert bool(state.is_full) == bool(fstate.is_full)
        assert bool(ours.can_sample(state)) == bool(theirs.can_sample(fstate))
