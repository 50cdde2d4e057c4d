"""The Vault: Flashbax's format both ways, every added step written exactly once, losses
named, ranges and streams, exact restore of a buffer's state, and writers killed at any
moment leaving whole writes."""

import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_replay
from eqx_replay.vault import Vault

from .helpers import tree_allclose


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import flashbax
    from flashbax.vault import Vault as FlashbaxVault


class Inner(NamedTuple):
    reward: jax.Array
    done: jax.Array


class Step(NamedTuple):
    obs: jax.Array
    info: Inner
    extras: dict


EXAMPLE = Step(
    obs=jnp.zeros((2, 3), jnp.float32),
    info=Inner(reward=jnp.float32(0), done=jnp.bool_(False)),
    extras={"id": jnp.int32(0), "mask": jnp.zeros(4, jnp.uint8)},
)
ROWS, CAPACITY = 3, 8


def numbered(start: int, t: int, rows: int = ROWS) -> Step:
    """`t` steps of each row from stream step `start`: row r of step s holds s * 10 + r."""
    ids = (start + jnp.arange(t))[None, :] * 10 + jnp.arange(rows)[:, None]
    return Step(
        obs=jnp.broadcast_to(ids[..., None, None], (rows, t, 2, 3)).astype(jnp.float32),
        info=Inner(reward=ids * 0.5, done=ids % 3 == 0),
        extras={"id": ids.astype(jnp.int32), "mask": (ids[..., None] + jnp.arange(4)) % 256},
    )


def numbered_u8(start: int, t: int, rows: int = ROWS) -> Step:
    step = numbered(start, t, rows)
    return step._replace(extras={**step.extras, "mask": step.extras["mask"].astype(jnp.uint8)})


def trajectory_buffer(capacity: int = CAPACITY, module: Any = eqx_replay) -> Any:
    return module.make_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=2,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_length_time_axis=capacity,
    )


@pytest.fixture
def here(tmp_path: pathlib.Path) -> Any:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def _ids(experience: Any) -> np.ndarray:
    return np.asarray(experience.extras["id"] if hasattr(experience, "extras") else experience)


def test_steps_added_between_writes_are_written_exactly_once(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.init(EXAMPLE)
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    rng = random.Random(0)
    added = 0
    # Write after 1..CAPACITY steps: no wrap, wraps, and an exactly full buffer (#66).
    for _ in range(40):
        for t in _split(rng.randint(1, CAPACITY), rng):
            state = buffer.add(state, numbered_u8(added, t))
            added += t
        written = vault.vault_index
        assert vault.write(state) == added - written
        assert vault.write(state) == 0
    assert vault.vault_index == added
    ids = np.asarray(vault.read().experience.extras["id"])
    np.testing.assert_array_equal(ids, np.arange(added)[None, :] * 10 + np.arange(ROWS)[:, None])


def _split(n: int, rng: random.Random) -> list[int]:
    parts = []
    while n:
        parts.append(rng.randint(1, n))
        n -= parts[-1]
    return parts


def test_the_first_write_of_an_exactly_full_buffer_writes_it_all(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, CAPACITY))
    assert int(state.current_index) == 0 and bool(state.is_full)
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    assert vault.write(state) == CAPACITY  # Flashbax writes 0 here.


def test_overwritten_steps_are_an_error_naming_them(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.init(EXAMPLE)
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    state = buffer.add(state, numbered_u8(0, 5))
    vault.write(state)
    state = buffer.add(state, numbered_u8(5, CAPACITY))
    state = buffer.add(state, numbered_u8(5 + CAPACITY, 3))
    with pytest.raises(ValueError, match=r"at least 3 steps of every row \(vault steps 5 to 7 or"):
        vault.write(state)
    assert vault.vault_index == 5
    # Several whole wraps after a full buffer: the step before the head changed.
    assert vault.write(state, skip_lost=True) == CAPACITY
    for i in range(3):
        state = buffer.add(state, numbered_u8(100 + i * CAPACITY, CAPACITY))
    state = buffer.add(state, numbered_u8(200, 2))
    with pytest.raises(ValueError, match=r"overwritten in the buffer before they were written"):
        vault.write(state)
    reread = Vault("v", vault_uid="a")
    assert reread.vault_index == 5 + CAPACITY


def test_steps_counted_by_the_caller_find_every_loss(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 5))
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    assert vault.write(state, added=5) == 5
    # Two whole wraps leave the write head where it was: without `added` that reads as one
    # capacity's worth (documented); with it, the lost steps are named.
    for i in range(2):
        state = buffer.add(state, numbered_u8(5 + i * CAPACITY, CAPACITY))
    lost = rf"at least {CAPACITY} steps of every row \(vault steps 5 to {4 + CAPACITY} or more\)"
    with pytest.raises(ValueError, match=lost):
        vault.write(state, added=2 * CAPACITY)
    assert vault.vault_index == 5
    with pytest.raises(ValueError, match=r"`added` \(3\) does not match the buffer's write head"):
        vault.write(state, added=3)
    with pytest.raises(ValueError, match=r"`added` must be an int >= 0; got -1"):
        vault.write(state, added=-1)
    assert vault.write(state, added=2 * CAPACITY, skip_lost=True) == CAPACITY
    state = buffer.add(state, numbered_u8(5 + 2 * CAPACITY, 3))
    assert vault.write(state, added=3) == 3
    ids = np.asarray(vault.read().experience.extras["id"])
    expected = np.array([*range(5), *range(5 + CAPACITY, 5 + 2 * CAPACITY + 3)])
    np.testing.assert_array_equal(ids, expected[None, :] * 10 + np.arange(ROWS)[:, None])


def test_a_state_that_is_not_a_continuation_is_refused(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 5))
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    vault.write(state)
    fresh = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 2))
    with pytest.raises(ValueError, match=r"holds fewer steps than at the last write"):
        vault.write(fresh)


def test_flashbax_reads_what_we_write_and_we_read_what_it_writes(here: Any) -> None:
    ours = trajectory_buffer()
    theirs = trajectory_buffer(module=flashbax)
    ours_state, their_state = ours.init(EXAMPLE), theirs.init(EXAMPLE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours_vault = Vault("ours", experience_structure=ours_state.experience, vault_uid="x")
        their_vault = FlashbaxVault(
            "theirs", experience_structure=their_state.experience, vault_uid="x"
        )
        for i in range(5):
            ours_state = ours.add(ours_state, numbered_u8(3 * i, 3))
            their_state = theirs.add(their_state, numbered_u8(3 * i, 3))
            ours_vault.write(ours_state)
            their_vault.write(their_state)
        expected = numbered_u8(0, 15)
        # Flashbax reading ours, with and without the structure.
        read = FlashbaxVault("ours", experience_structure=ours_state.experience, vault_uid="x")
        assert tree_allclose(read.read().experience, expected)
        as_dicts = FlashbaxVault("ours", vault_uid="x").read().experience
        assert tree_allclose(as_dicts["extras"]["id"], expected.extras["id"])
        assert tree_allclose(as_dicts["info"]["done"], expected.info.done)
    # Ours reading Flashbax's, with and without the structure.
    read = Vault("theirs", experience_structure=their_state.experience, vault_uid="x")
    assert read.vault_index == 15
    assert tree_allclose(read.read().experience, expected)
    as_dicts = Vault("theirs", vault_uid="x").read().experience
    assert tree_allclose(as_dicts["obs"], expected.obs)
    assert tree_allclose(as_dicts["extras"]["mask"], expected.extras["mask"])
    # The same metadata, leaf for leaf.
    import json

    ours_meta = json.loads((here / "vaults/ours/x/metadata.json").read_text())
    their_meta = json.loads((here / "vaults/theirs/x/metadata.json").read_text())
    assert ours_meta == their_meta


def test_reading_ranges_streams_and_restoring_a_state(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.init(EXAMPLE)
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    for i in range(9):
        state = buffer.add(state, numbered_u8(3 * i, 3))
        vault.write(state)
    everything = numbered_u8(0, 27)
    cut = lambda a, b: jax.tree.map(lambda x: x[:, a:b], everything)  # noqa: E731
    assert tree_allclose(vault.read(timesteps=5).experience, cut(22, 27))
    assert tree_allclose(vault.read(percentiles=(20, 60)).experience, cut(5, 16))
    assert tree_allclose(vault.read_range(4, 9), cut(4, 9))
    pieces = list(vault.chunks(10, start=2))
    assert [_ids(p).shape[1] for p in pieces] == [10, 10, 5]
    assert tree_allclose(jax.tree.map(lambda *x: jnp.concatenate(x, 1), *pieces), cut(2, 27))
    # The buffer the vault was written from, exactly; and a fresh one continues it.
    restored = vault.to_state(buffer, EXAMPLE)
    assert tree_allclose(restored, state)
    key = jax.random.key(0)
    assert tree_allclose(buffer.sample(restored, key), buffer.sample(state, key))
    bigger = trajectory_buffer(capacity=40)
    restored = vault.to_state(bigger, EXAMPLE)
    assert int(restored.current_index) == 27 and not bool(restored.is_full)
    assert tree_allclose(jax.tree.map(lambda x: x[:, :27], restored.experience), everything)


def test_bad_inputs_are_clear_errors(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 4))
    with pytest.raises(ValueError, match=r"there is no vault at .*no `experience_structure`"):
        Vault("missing", vault_uid="a")
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    vault.write(state)
    other = {"obs": jnp.zeros((ROWS, 4, 2, 3))}
    with pytest.raises(ValueError, match=r"the experience has leaves \['obs.'\]; the vault stores"):
        Vault("v", experience_structure=other, vault_uid="a")
    wrong = jax.tree.map(lambda x: x, state.experience)
    wrong = wrong._replace(obs=jnp.zeros((ROWS, CAPACITY, 2, 4)))
    with pytest.raises(ValueError, match=r"leaf obs is float32\[3, 8, 2, 4\]; the vault stores "):
        Vault("v", experience_structure=wrong, vault_uid="a")
    with pytest.raises(ValueError, match=r"`Vault.write`: expected a buffer state"):
        vault.write(state.experience)
    other_rows = trajectory_buffer().init(EXAMPLE)
    other_rows = other_rows.__class__(
        experience=jax.tree.map(lambda x: x[:2], other_rows.experience),
        current_index=other_rows.current_index,
        is_full=other_rows.is_full,
    )
    with pytest.raises(ValueError, match=r"state leaf obs is float32\[2, 8, 2, 3\]; the vault"):
        vault.write(other_rows)
    with pytest.raises(ValueError, match=r"`timesteps` must be in \[0, 4\]; got 5"):
        vault.read(timesteps=5)
    with pytest.raises(ValueError, match=r"`percentiles` must be ascending"):
        vault.read(percentiles=(60, 20))
    with pytest.raises(ValueError, match=r"steps \[2, 9\) are not within the vault's \[0, 4\)"):
        vault.read_range(2, 9)
    with pytest.raises(ValueError, match=r"`steps` must be >= 1; got 0"):
        next(vault.chunks(0))
    prioritised = eqx_replay.make_prioritised_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=2,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_length_time_axis=CAPACITY,
    )
    with pytest.raises(ValueError, match=r"PrioritisedTrajectoryBufferState; a vault holds only"):
        vault.to_state(prioritised, EXAMPLE)
    (here / "vaults/v/broken").mkdir()
    with pytest.raises(ValueError, match=r"metadata.json is missing or not JSON"):
        Vault("v", vault_uid="broken")
    assert vault.vault_index == 4 and Vault("v", vault_uid="a").vault_index == 4


def test_a_writer_killed_at_any_moment_leaves_every_completed_write(tmp_path: Any) -> None:
    writer = pathlib.Path(__file__).with_name("vault_writer.py")
    rng = random.Random(1)
    completed = 0
    for run in range(5):
        child = subprocess.Popen(
            [sys.executable, str(writer), str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        deadline = time.monotonic() + 120
        if run == 0:
            time.sleep(rng.uniform(0.5, 3.0))  # Perhaps while the vault is being made.
        else:
            for _ in range(rng.randint(1, 30)):
                line = child.stdout.readline()
                assert line, "the writer stopped by itself"
                completed = max(completed, int(line))
                assert time.monotonic() < deadline
            time.sleep(rng.uniform(0, 0.05))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=60)
        completed = max([completed, *map(int, rest.split())])
        if not (tmp_path / "vaults/crash/run").exists():
            assert completed == 0
            continue
        vault = Vault("crash", vault_uid="run", rel_dir=str(tmp_path / "vaults"))
        assert vault.vault_index >= completed
        ids = np.asarray(vault.read().experience["step"])
        expected = np.arange(vault.vault_index)[None, :] * 10 + np.arange(2)[:, None]
        np.testing.assert_array_equal(ids, expected)
        obs = np.asarray(vault.read_range(0, vault.vault_index)["obs"])
        np.testing.assert_array_equal(obs, np.broadcast_to(expected[..., None], obs.shape))
        completed = vault.vault_index
    assert completed > 0
