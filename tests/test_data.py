"""The data layer (`_data.py`): what every state declares, and the package's public names."""

import dataclasses
import types

import equinox as eqx
import jax.numpy as jnp
import pytest
from jaxtyping import Array

import eqx_replay
from eqx_replay._data import AbstractState, field_roles, REPLICATED, ROWS


EXAMPLE = {"obs": jnp.zeros(3), "done": jnp.zeros((), bool)}  # obs: 3 scalar frames when stacked
BUFFERS = {
    "trajectory": eqx_replay.make_trajectory_buffer(2, 2, 2, 1, 2, max_length_time_axis=8),
    "strict": eqx_replay.make_trajectory_buffer(
        2, 2, 2, 1, 2, max_length_time_axis=8, episode_end=lambda s: s["done"], boundary="strict"
    ),
    "prioritised": eqx_replay.make_prioritised_trajectory_buffer(
        2, 2, 2, 1, 2, max_length_time_axis=8
    ),
    "queue": eqx_replay.make_trajectory_queue(8, 2, 1, 2),
    "frame_stacked": eqx_replay.make_trajectory_buffer(
        2,
        2,
        2,
        1,
        2,
        max_length_time_axis=8,
        episode_end=lambda s: s["done"],
        frame_stack=eqx_replay.FrameStack(lambda s: s["obs"], 3),
    ),
}
# The role of each field under sharding: split with the rows, the same on every device, or
# one per device (a prioritised buffer's own sum tree on each device).
ROLES = {
    "trajectory": dict(experience="rows", current_index="replicated", is_full="replicated"),
    "strict": dict(
        experience="rows",
        current_index="replicated",
        is_full="replicated",
        windows="per_device",
        frame_stack="rows",
    ),
    "prioritised": dict(
        experience="rows",
        current_index="replicated",
        is_full="replicated",
        priorities="per_device",
        generation="per_device",
        max_priority="per_device",
        frame_stack="rows",
    ),
    "queue": dict(
        experience="rows",
        write_index="replicated",
        read_index="replicated",
        is_full="replicated",
        refused_adds="replicated",
    ),
    "frame_stacked": dict(
        experience="rows", current_index="replicated", is_full="replicated", frame_stack="rows"
    ),
}


@pytest.mark.parametrize("kind", BUFFERS)
def test_every_state_declares_its_fields_roles_and_write_head(kind):
    state = BUFFERS[kind].init(EXAMPLE)
    assert isinstance(state, AbstractState)
    assert field_roles(state) == ROLES[kind]
    head = state.current_index if kind != "queue" else state.write_index
    assert state._write_head is head


def test_a_state_field_without_a_role_is_named():
    class Unsaid(AbstractState):
        experience: Array = eqx.field(metadata=ROWS)
        is_full: Array = eqx.field(metadata=REPLICATED)
        current_index: Array

        @property
        def _write_head(self):
            return self.current_index

    with pytest.raises(TypeError, match=r"Unsaid\.current_index declares no `role`"):
        field_roles(Unsaid(jnp.zeros((1, 2)), jnp.array(False), jnp.array(0)))


def test_the_strict_state_is_its_own_final_class():
    # Abstract-or-final: no state subclasses another concrete state.
    strict = eqx_replay.StrictTrajectoryBufferState
    assert not issubclass(strict, eqx_replay.TrajectoryBufferState)
    fields = [f.name for f in dataclasses.fields(strict)]
    # Flashbax's three fields first, in its order; `frame_stack` (None unless the buffer
    # stores frames once) last, so that positional construction keeps working.
    assert fields == ["experience", "current_index", "is_full", "windows", "grid", "frame_stack"]


def test_public_names_are_the_ones_listed():
    # Modules are left out: `eqx_replay.vault` (which needs the `io` extra) appears once some
    # code imports it, and jaxtyping's import hook, which the test run uses, adds `jaxtyping`.
    public = {
        name
        for name, value in vars(eqx_replay).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(eqx_replay.__all__) - {"returns"}
    returns = vars(eqx_replay)["returns"]
    assert isinstance(returns, types.ModuleType)
    assert "importlib" not in vars(eqx_replay)
    for name in returns.__all__:
        assert getattr(returns, name) is getattr(eqx_replay, name)
