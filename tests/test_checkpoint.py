"""`save_state` / `load_state`: exact round trips of every kind mid-wrap, continuation,
mismatches named, damage detected, and the ways users checkpoint whole agents."""

import os
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import eqx_replay

from .helpers import quiet, tree_allclose


EXAMPLE = {"obs": jnp.zeros(3, jnp.float32), "act": jnp.int32(0), "done": jnp.bool_(False)}


def steps(i: int, rows: int, t: int) -> dict[str, jax.Array]:
    """`t` steps of `rows` rows numbered from `i`; every 5th step ends an episode."""
    n = i + jnp.arange(rows * t).reshape(rows, t)
    return {
        "obs": jnp.stack([n, -n, n * 0.5], -1).astype(jnp.float32),
        "act": n.astype(jnp.int32),
        "done": n % 5 == 4,
    }


# The trajectory and prioritised trajectory buffers' configuration in these tests.
WINDOWS: dict[str, Any] = dict(
    add_batch_size=2,
    sample_batch_size=4,
    sample_sequence_length=3,
    period=1,
    min_length_time_axis=3,
    max_length_time_axis=10,
)


def _trajectory(**kwargs: Any) -> Any:
    return eqx_replay.make_trajectory_buffer(**WINDOWS, **kwargs)


def _prioritised(**kwargs: Any) -> Any:
    return eqx_replay.make_prioritised_trajectory_buffer(**WINDOWS, **kwargs)


def _flat(rows: int) -> Callable[..., Any]:
    def add(buffer: Any, state: Any, i: int) -> Any:
        return buffer.add(state, jax.tree.map(lambda x: x[:, 0], steps(i, rows, 1)))

    return add


def _rows(rows: int, t: int = 1) -> Callable[..., Any]:
    def add(buffer: Any, state: Any, i: int) -> Any:
        return buffer.add(state, steps(i, rows, t))

    return add


def _items(buffer: Any, state: Any, i: int) -> Any:
    return buffer.add(state, jax.tree.map(lambda x: x[0, 0], steps(i, 1, 1)))


def _queue_add(buffer: Any, state: Any, i: int) -> Any:
    state = buffer.add(state, steps(i, 2, 2))
    if i % 3 == 0:
        state, _ = buffer.sample(state)
    return state


# kind -> (buffer, add one piece, pieces before the save (mid-wrap), whether sampled)
KINDS: dict[str, tuple[Callable[[], Any], Callable[..., Any], int]] = {
    "trajectory": (_trajectory, _rows(2, 3), 5),
    "trajectory-mask": (
        lambda: _trajectory(episode_end=lambda s: s["done"], boundary="mask"),
        _rows(2, 3),
        5,
    ),
    "trajectory-strict": (
        lambda: _trajectory(episode_end=lambda s: s["done"], boundary="strict"),
        _rows(2, 3),
        5,
    ),
    "prioritised": (_prioritised, _rows(2, 3), 5),
    "prioritised-strict": (
        lambda: _prioritised(episode_end=lambda s: s["done"], boundary="strict"),
        _rows(2, 3),
        5,
    ),
    "flat": (
        lambda: eqx_replay.make_flat_buffer(
            max_length=16, min_length=2, sample_batch_size=4, add_batch_size=2
        ),
        _flat(2),
        11,
    ),
    "prioritised-flat": (
        lambda: eqx_replay.make_prioritised_flat_buffer(
            max_length=16, min_length=2, sample_batch_size=4, add_batch_size=2
        ),
        _flat(2),
        11,
    ),
    "item": (
        lambda: eqx_replay.make_item_buffer(max_length=9, min_length=2, sample_batch_size=4),
        _items,
        13,
    ),
    "prioritised-item": (
        lambda: eqx_replay.make_prioritised_item_buffer(
            max_length=9, min_length=2, sample_batch_size=4
        ),
        _items,
        13,
    ),
    "queue": (
        lambda: eqx_replay.make_trajectory_queue(
            max_length_time_axis=8,
            add_batch_size=2,
            add_sequence_length=2,
            sample_sequence_length=2,
        ),
        _queue_add,
        6,
    ),
}


def _same(a: Any, b: Any) -> bool:
    """Equal leaf for leaf, dtypes and static fields included."""
    return (
        jax.tree.structure(a) == jax.tree.structure(b)
        and all(x.dtype == y.dtype for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        and tree_allclose(a, b)
    )


def _sample(buffer: Any, state: Any, key: jax.Array) -> tuple[Any, Any]:
    if isinstance(buffer, eqx_replay.TrajectoryQueue):
        return buffer.sample(state)
    sample = buffer.sample(state, key)
    if isinstance(buffer, eqx_replay.AbstractPrioritisedBuffer):
        state = buffer.set_priorities(
            state, sample.indices, jnp.arange(1.0, 1.0 + sample.indices.shape[0])
        )
    return state, sample


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_round_trip_mid_wrap_is_exact_and_continues_identically(kind: str, tmp_path: Any) -> None:
    make, add, pieces = KINDS[kind]
    with quiet():
        buffer = make()
    state = buffer.init(EXAMPLE)
    key = jax.random.key(0)
    for i in range(pieces):
        state = add(buffer, state, 7 * i)
        if i % 2 and not isinstance(buffer, eqx_replay.TrajectoryQueue):
            state, _ = _sample(buffer, state, jax.random.fold_in(key, i))
    kept = jax.tree.map(jnp.copy, state)
    eqx_replay.save_state(tmp_path / "ckpt", buffer, state)
    # Saving neither changed nor consumed the state: it is equal, and still usable.
    assert _same(state, kept)
    loaded = eqx_replay.load_state(tmp_path / "ckpt", buffer, EXAMPLE)
    assert _same(loaded, kept)
    for i in range(pieces, pieces + 4):
        k = jax.random.fold_in(key, i)
        state, sample = _sample(buffer, add(buffer, state, 7 * i), k)
        loaded, sample_loaded = _sample(buffer, add(buffer, loaded, 7 * i), k)
        assert _same(state, loaded)
        assert _same(sample, sample_loaded)


def test_saved_directory_records_kind_configuration_and_structure_as_json(tmp_path: Any) -> None:
    buffer = _prioritised()
    state = _rows(2, 3)(buffer, buffer.init(EXAMPLE), 0)
    eqx_replay.save_state(tmp_path / "c", buffer, state)
    import json

    description = json.loads((tmp_path / "c" / "eqx_replay" / "metadata").read_text())
    assert description["kind"] == "PrioritisedTrajectoryBuffer"
    assert description["configuration"]["max_length_time_axis"] == 10
    assert description["configuration"]["priority_exponent"] == 0.6
    assert {"path": ".experience['obs']", "dtype": "float32", "shape": [2, 10, 3]} in (
        description["leaves"]
    )
    # No pickle anywhere in the checkpoint.
    for path in (tmp_path / "c").rglob("*"):
        if path.is_file():
            assert b"\x80\x04\x95" not in path.read_bytes()[:3]


def _saved(tmp_path: Any) -> tuple[Any, Any, pathlib.Path]:
    buffer = _trajectory()
    state = buffer.init(EXAMPLE)
    for i in range(4):
        state = _rows(2, 3)(buffer, state, 10 * i)
    directory = tmp_path / "ckpt"
    eqx_replay.save_state(directory, buffer, state)
    return buffer, state, directory


def test_mismatches_are_named(tmp_path: Any) -> None:
    buffer, _, directory = _saved(tmp_path)
    with pytest.raises(ValueError, match=r"max_length_time_axis: saved 10, buffer 12"):
        eqx_replay.load_state(
            directory,
            eqx_replay.make_trajectory_buffer(**{**WINDOWS, "max_length_time_axis": 12}),
            EXAMPLE,
        )
    with pytest.raises(ValueError, match=r"holds a TrajectoryBuffer's state; the buffer is a Pri"):
        eqx_replay.load_state(directory, _prioritised(), EXAMPLE)
    with pytest.raises(ValueError, match=r"boundary: saved 'ignore', buffer 'mask'"):
        eqx_replay.load_state(
            directory, _trajectory(episode_end=lambda s: s["done"], boundary="mask"), EXAMPLE
        )
    other_shape = {**EXAMPLE, "obs": jnp.zeros(4, jnp.float32)}
    with pytest.raises(ValueError, match=r"\['obs'\]: saved float32\[2, 10, 3\], this buffer .*"):
        eqx_replay.load_state(directory, buffer, other_shape)
    other_dtype = {**EXAMPLE, "act": jnp.int8(0)}
    with pytest.raises(ValueError, match=r"\['act'\]: saved int32\[2, 10\], .* int8\[2, 10\]"):
        eqx_replay.load_state(directory, buffer, other_dtype)
    with pytest.raises(ValueError, match=r"not in the example's state: \[\".experience\['done'\]"):
        eqx_replay.load_state(directory, buffer, {"obs": EXAMPLE["obs"], "act": EXAMPLE["act"]})
    # A different `donate_state` is the same configuration.
    loaded = eqx_replay.load_state(directory, _trajectory(donate_state=False), EXAMPLE)
    assert loaded.current_index == 2


def test_damage_is_a_clear_error(tmp_path: Any) -> None:
    # In a process of its own: after a failed read, Orbax's worker threads may report
    # "Event loop is closed" to Python's unraisable hook at any later moment, which this
    # suite's `filterwarnings = error` would pin on whichever test runs then.
    code = (
        "import pathlib, sys\n"
        "from tests.test_checkpoint import damage_cases\n"
        "damage_cases(pathlib.Path(sys.argv[1]))\n"
        "print('damage cases passed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=pathlib.Path(__file__).parent.parent,
    )
    assert done.returncode == 0 and "damage cases passed" in done.stdout, done.stderr[-3000:]


def damage_cases(tmp_path: pathlib.Path) -> None:
    buffer, state, directory = _saved(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"`load_state`: no checkpoint at .*missing"):
        eqx_replay.load_state(tmp_path / "missing", buffer, EXAMPLE)
    with pytest.raises(ValueError, match=r"already exists; pass `overwrite=True`"):
        eqx_replay.save_state(directory, buffer, state)

    def damaged(change: Callable[[pathlib.Path], None]) -> pathlib.Path:
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        subprocess.run(["cp", "-r", str(directory), str(copy)], check=True)
        change(copy)
        return copy

    def flip(file: pathlib.Path) -> None:
        raw = bytearray(file.read_bytes())
        for i in range(len(raw) // 3, min(len(raw), len(raw) // 3 + 8)):
            raw[i] ^= 0xFF
        file.write_bytes(bytes(raw))

    def truncate(file: pathlib.Path) -> None:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    # Every file of the arrays, flipped or cut: a clear error, or (for files the reader
    # does not use) the saved state exactly; never another state.
    files = sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file())
    raised = 0
    for file in files:
        for change in (flip, truncate):
            copy = damaged(lambda c: change(c / file))
            try:
                loaded = eqx_replay.load_state(copy, buffer, EXAMPLE)
            except (ValueError, FileNotFoundError) as error:
                assert "`load_state`: " in str(error)
                raised += 1
            else:
                assert _same(loaded, state), (file, change)
    assert raised >= 4

    def bad_json(copy: pathlib.Path) -> None:
        (copy / "eqx_replay" / "metadata").write_text('{"format": "eqx_replay.sta')

    def bad_array_json(copy: pathlib.Path) -> None:
        for file in (copy / "state" / "array_metadatas").iterdir():
            file.write_text('{"array_metadatas": [')

    def no_description(copy: pathlib.Path) -> None:
        os.remove(copy / "eqx_replay" / "metadata")

    def no_arrays(copy: pathlib.Path) -> None:
        subprocess.run(["rm", "-r", str(copy / "state")], check=True)

    cases = {
        bad_json: r"is damaged: .*metadata is not readable JSON",
        bad_array_json: r"is damaged: .*array_metadatas.* is not readable JSON",
        no_description: r"not a complete eqx_replay checkpoint: .*metadata is missing",
        no_arrays: r"is damaged: its arrays could not be read",
    }
    for change, message in cases.items():
        with pytest.raises(ValueError, match=message):
            eqx_replay.load_state(damaged(change), buffer, EXAMPLE)

    # One bit of a large leaf's stored data (not compressed: the reader cannot tell), caught
    # by the leaf's checksum.
    big = _trajectory()
    big_example = {**EXAMPLE, "obs": jnp.zeros(4096, jnp.float32)}
    big_state = big.add(
        big.init(big_example),
        {**steps(0, 2, 7), "obs": jax.random.normal(jax.random.key(0), (2, 7, 4096))},
    )
    eqx_replay.save_state(tmp_path / "big", big, big_state)
    copy = tmp_path / "big_flipped"
    subprocess.run(["cp", "-r", str(tmp_path / "big"), str(copy)], check=True)
    data = max((p for p in copy.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"leaf .experience\['obs'\] does not match the checksum"):
        eqx_replay.load_state(copy, big, big_example)


def test_an_unfinished_save_is_named(tmp_path: Any) -> None:
    buffer, _, _ = _saved(tmp_path)
    (tmp_path / "later.orbax-checkpoint-tmp-123").mkdir()
    with pytest.raises(FileNotFoundError, match=r"a save that did not complete"):
        eqx_replay.load_state(tmp_path / "later", buffer, EXAMPLE)


def test_bad_calls_leave_the_state_intact(tmp_path: Any) -> None:
    buffer, state, directory = _saved(tmp_path)
    # (In the tests, the annotation check answers first; without it, the library's check.)
    with pytest.raises(TypeError, match=r"eqx_replay buffer|parameter 'buffer'"):
        eqx_replay.save_state(tmp_path / "x", object(), state)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"`save_state`: `state` must be a PrioritisedTrajectoryBufferState"
    ):
        eqx_replay.save_state(tmp_path / "x", _prioritised(), state)
    assert not (tmp_path / "x").exists()
    later = buffer.add(state, steps(0, 2, 1))
    with pytest.raises(ValueError, match=r"`save_state`: the state's arrays have been deleted"):
        eqx_replay.save_state(tmp_path / "x", buffer, state)
    eqx_replay.save_state(directory, buffer, later, overwrite=True)
    assert _same(eqx_replay.load_state(directory, buffer, EXAMPLE), later)


class Agent(eqx.Module):
    weights: jax.Array
    replay: eqx_replay.PrioritisedTrajectoryBufferState
    steps: jax.Array


def test_agent_module_round_trips_through_equinox_and_orbax(tmp_path: Any) -> None:
    buffer = _prioritised()
    state = buffer.init(EXAMPLE)
    for i in range(5):
        state = _rows(2, 3)(buffer, state, 10 * i)
    agent = Agent(jnp.arange(6.0).reshape(2, 3), state, jnp.int32(5))
    like = Agent(jnp.zeros((2, 3)), buffer.init(EXAMPLE), jnp.int32(0))

    eqx.tree_serialise_leaves(tmp_path / "agent.eqx", agent)
    restored = eqx.tree_deserialise_leaves(tmp_path / "agent.eqx", like)
    assert _same(restored, agent)

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "agent", agent)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "agent", like)
    assert _same(restored, agent)
    key = jax.random.key(3)
    assert _same(buffer.sample(restored.replay, key), buffer.sample(agent.replay, key))


def test_import_does_not_need_the_io_extra() -> None:
    code = (
        "import sys\n"
        "for name in ('orbax', 'orbax.checkpoint', 'tensorstore'):\n"
        "    sys.modules[name] = None\n"
        "import eqx_replay\n"
        "assert callable(eqx_replay.save_state)\n"
        "try:\n"
        "    import eqx_replay.vault\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'eqx_replay[io]'\" in str(e), e\n"
        "else:\n"
        "    raise AssertionError('vault imported without tensorstore')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_checksums_see_any_one_changed_element() -> None:
    from eqx_replay._checkpoint import _checksums

    rng = np.random.default_rng(0)
    for dtype, size in [
        (jnp.bool_, 1000),
        (jnp.uint8, 3 << 19),  # crosses a block boundary: the loop and the tail
        (jnp.int16, 5000),
        (jnp.float32, (1 << 20) * 2),
        (jnp.bfloat16, 777),
    ]:
        base = jnp.asarray(rng.integers(0, 2, size)).astype(dtype)
        sums = _checksums(None, (), [base])[0]
        for position in rng.integers(0, size, 3):
            changed = base.at[position].set(
                jnp.logical_not(base[position]) if dtype == jnp.bool_ else base[position] + 1
            )
            assert not bool(jnp.any(_checksums(None, (), [changed])[0] == sums)), (dtype, position)
