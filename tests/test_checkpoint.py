"""`save_state` / `load_state`: exact round trips of every kind mid-wrap, continuation,
mismatches named, damage detected, saves killed at any moment, paths that hold no
checkpoint, and the ways users checkpoint whole agents."""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import eqx_replay

from . import checkpoint_saver
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


def test_a_state_in_host_memory_saves_too(tmp_path: pathlib.Path) -> None:
    buffer, state, _ = _saved(tmp_path)
    eqx_replay.save_state(tmp_path / "host", buffer, jax.device_get(state))
    assert _same(eqx_replay.load_state(tmp_path / "host", buffer, EXAMPLE), state)


def test_a_state_placed_otherwise_than_init_places_it_saves_and_loads(tmp_path: Any) -> None:
    # The digests are of the parts that `init`'s placement makes, whatever the state's own
    # layout: an unsharded buffer's state split over this process's two CPU devices.
    buffer, state, _ = _saved(tmp_path)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("d",))
    split = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    split = eqx.tree_at(
        lambda s: s.experience,
        split,
        jax.device_put(
            state.experience, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
        ),
    )
    assert len(split.experience["obs"].addressable_shards) == 2
    eqx_replay.save_state(tmp_path / "split", buffer, split)
    assert _same(eqx_replay.load_state(tmp_path / "split", buffer, EXAMPLE), state)


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
    # One BLAKE2b-256 digest per leaf (one part each: the state is on one device).
    assert len(description["digests"]) == len(description["leaves"])
    obs = [leaf["path"] for leaf in description["leaves"]].index(".experience['obs']")
    [part] = description["digests"][obs]
    assert part["index"] == [[0, 2], [0, 10], [0, 3]] and len(bytes.fromhex(part["blake2b"])) == 32
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
    buffer, state, directory = _saved(tmp_path)
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
    # The example may be shapes and dtypes alone.
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), EXAMPLE)
    assert _same(eqx_replay.load_state(directory, buffer, shapes), state)
    # A different `donate_state` is the same configuration.
    loaded = eqx_replay.load_state(directory, _trajectory(donate_state=False), EXAMPLE)
    assert loaded.current_index == 2


def test_damage_is_a_clear_error(tmp_path: Any) -> None:
    # In a process of its own: after a failed read, Orbax's worker threads may report
    # "Event loop is closed" to Python's unraisable hook at any later moment, which this
    # suite's `filterwarnings = error` would pin on whichever test runs then.
    _in_a_process_of_its_own("damage_cases", tmp_path)


def _in_a_process_of_its_own(cases: str, tmp_path: pathlib.Path) -> None:
    """Runs this module's function `cases(tmp_path)` in a new Python process."""
    code = (
        "import pathlib, sys\n"
        f"from tests.test_checkpoint import {cases}\n"
        f"{cases}(pathlib.Path(sys.argv[1]))\n"
        "print('cases passed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=pathlib.Path(__file__).parent.parent,
    )
    assert done.returncode == 0 and "cases passed" in done.stdout, done.stderr[-3000:]


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
    # by the leaf's digest.
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
    with pytest.raises(ValueError, match=r"leaf .experience\['obs'\] does not match the BLAKE2b"):
        eqx_replay.load_state(copy, big, big_example)


def test_a_checkpoint_of_another_format_version_is_named(tmp_path: pathlib.Path) -> None:
    buffer, _, directory = _saved(tmp_path)
    file = directory / "eqx_replay" / "metadata"
    file.write_text(file.read_text().replace('"version": 2', '"version": 3'))
    with pytest.raises(ValueError, match=r"format version 3; this eqx_replay reads versions 1 and"):
        eqx_replay.load_state(directory, buffer, EXAMPLE)


# A checkpoint written by eqx_replay before BLAKE2b digests (format 1: two 32-bit sums per
# leaf): the prioritised state of `_format_1_state`, saved by commit b73b718.
FORMAT_1 = pathlib.Path(__file__).parent / "data" / "checkpoint_format_1"


def _format_1_state() -> tuple[Any, Any]:
    buffer = _prioritised()
    state = buffer.init(EXAMPLE)
    for i in range(5):
        state = _rows(2, 3)(buffer, state, 7 * i)
    sample = buffer.sample(state, jax.random.key(0))
    return buffer, buffer.set_priorities(state, sample.indices, jnp.arange(1.0, 5.0))


def test_a_format_1_checkpoint_still_loads_checked_by_its_sums(tmp_path: pathlib.Path) -> None:
    buffer, state = _format_1_state()
    with pytest.warns(UserWarning, match=r"format 1, whose checksums .* Save it again"):
        loaded = eqx_replay.load_state(FORMAT_1, buffer, EXAMPLE)
    assert _same(loaded, state)
    # Saved again, it is format 2.
    eqx_replay.save_state(tmp_path / "again", buffer, loaded)
    assert '"version": 2' in (tmp_path / "again" / "eqx_replay" / "metadata").read_text()
    # Its sums still find damage: one changed sum is a changed leaf.
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(FORMAT_1), str(copy)], check=True)
    file = copy / "eqx_replay" / "metadata"
    description = json.loads(file.read_text())
    description["checksums"][0][0] ^= 1
    file.write_text(json.dumps(description))
    with pytest.raises(ValueError, match=r"is damaged: state leaf .* \(format 1: saved"):
        eqx_replay.load_state(copy, buffer, EXAMPLE)


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


def test_digests_see_any_one_changed_element_two_sign_flips_and_moved_pieces() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from eqx_replay._checkpoint import _digest, _PIECE_BYTES

    rng = np.random.default_rng(0)
    with ThreadPoolExecutor(2) as pool:
        for dtype, size in [
            (jnp.bool_, 1000),
            (jnp.uint8, _PIECE_BYTES * 3 // 2),  # a whole piece and half of one
            (jnp.int16, 5000),
            (jnp.float32, _PIECE_BYTES),  # exactly four pieces
            (jnp.bfloat16, 777),
            (jnp.complex64, 300),
            (jnp.int4, 999),
        ]:
            base = jnp.asarray(rng.integers(0, 2, size)).astype(dtype)
            digest = _digest(base, pool)
            assert len(digest) == 32  # BLAKE2b-256
            for position in [0, size - 1, *rng.integers(0, size, 3)]:
                changed = base.at[position].set(
                    jnp.logical_not(base[position]) if dtype == jnp.bool_ else base[position] + 1
                )
                assert _digest(changed, pool) != digest, (dtype, position)
        # Two sign bits flipped: two position-weighted sums modulo 2**32 (checkpoint format
        # version 1) changed by 2**31 each time, which cancels.
        x = jnp.asarray(rng.standard_normal(1000), jnp.float32)
        assert _digest(x.at[jnp.array([3, 700])].multiply(-1), pool) != _digest(x, pool)
        # The same pieces in another order: each piece is hashed with its place.
        pieces = jnp.asarray(rng.integers(0, 256, (2, _PIECE_BYTES)), jnp.uint8)
        assert _digest(pieces[::-1], pool) != _digest(pieces, pool)


def test_two_sign_bits_flipped_on_disk_are_caught(tmp_path: pathlib.Path) -> None:
    # A leaf large enough to be stored as it is (TensorStore compresses small ones inline).
    buffer = _trajectory()
    example = {**EXAMPLE, "obs": jnp.zeros(4096, jnp.float32)}
    values = 1000.5 + np.arange(2 * 10 * 4096, dtype=np.float32)
    state = buffer.add(
        buffer.init(example),
        {**steps(0, 2, 10), "obs": jnp.asarray(values.reshape(2, 10, 4096))},
    )
    eqx_replay.save_state(tmp_path / "c", buffer, state)
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    for value in values[[7, 50_000]]:
        # The one place of the value's bytes; its sign is bit 7 of its last byte.
        pattern = value.tobytes()
        [file] = [f for f in files if f.read_bytes().count(pattern) == 1]
        raw = bytearray(file.read_bytes())
        raw[raw.find(pattern) + 3] ^= 0x80
        file.write_bytes(bytes(raw))
    with pytest.raises(
        ValueError, match=r"`load_state`: .* is damaged: state leaf .experience\['obs'\] does not"
    ):
        eqx_replay.load_state(tmp_path / "c", buffer, example)


@pytest.mark.parametrize(
    "dtype", [jnp.complex64, jnp.int4, jnp.bfloat16, jnp.float8_e4m3fn, jnp.uint4]
)
def test_every_dtype_is_saved_exactly_or_refused_naming_the_leaf(
    dtype: Any, tmp_path: pathlib.Path
) -> None:
    example = {"x": jnp.zeros(3, dtype), "n": jnp.int32(0)}
    buffer = _trajectory()
    numbers = jax.random.randint(jax.random.key(0), (2, 4, 3), -8, 8)
    state = buffer.add(
        buffer.init(example), {"x": numbers.astype(dtype), "n": jnp.zeros((2, 4), jnp.int32)}
    )
    if dtype == jnp.uint4:  # TensorStore has no such type
        name = jnp.dtype(dtype).name
        with pytest.raises(
            TypeError, match=rf"`save_state`: state leaf .experience\['x'\] has dtype {name}"
        ):
            eqx_replay.save_state(tmp_path / "c", buffer, state)
        assert not list(tmp_path.iterdir())
        return
    eqx_replay.save_state(tmp_path / "c", buffer, state)
    loaded = eqx_replay.load_state(tmp_path / "c", buffer, example)
    assert _same(loaded, state)
    got, want = np.asarray(loaded.experience["x"]), np.asarray(state.experience["x"])
    assert got.tobytes() == want.tobytes()


def test_an_interrupted_swap_is_read_and_finished_by_the_next_save(
    tmp_path: pathlib.Path,
) -> None:
    # What a crash between the swap's renames leaves: the old checkpoint renamed aside (here
    # half removed), the new one complete beside the path, nothing at the path.
    buffer, old, directory = _saved(tmp_path)
    new = _rows(2, 3)(buffer, jax.tree.map(jnp.copy, old), 99)
    eqx_replay.save_state(tmp_path / "other", buffer, new)
    os.rename(directory, tmp_path / "ckpt.eqx_replay-old")
    subprocess.run(["rm", "-r", str(tmp_path / "ckpt.eqx_replay-old" / "state")], check=True)
    os.rename(tmp_path / "other", tmp_path / "ckpt.eqx_replay-new")
    assert _same(eqx_replay.load_state(directory, buffer, EXAMPLE), new)
    with pytest.raises(ValueError, match=r"already exists; pass `overwrite=True`"):
        eqx_replay.save_state(directory, buffer, old)
    assert _same(eqx_replay.load_state(directory, buffer, EXAMPLE), new)
    newer = _rows(2, 3)(buffer, new, 199)
    # What crashed saves leave of Orbax's temporary directories (named with a timestamp by
    # some Orbax versions) goes too.
    for leftover in (
        "ckpt.eqx_replay-new.orbax-checkpoint-tmp",
        "ckpt.eqx_replay-new.orbax-checkpoint-tmp-1733",
    ):
        (tmp_path / leftover / "state").mkdir(parents=True)
    eqx_replay.save_state(directory, buffer, newer, overwrite=True)
    assert _same(eqx_replay.load_state(directory, buffer, EXAMPLE), newer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_paths_that_hold_no_checkpoint_are_clear_errors(tmp_path: pathlib.Path) -> None:
    # In a process of its own: without this suite's annotation checks, which would answer
    # a bytes path before the library does.
    _in_a_process_of_its_own("path_cases", tmp_path)


def path_cases(tmp_path: pathlib.Path) -> None:
    os.chdir(tmp_path)
    buffer, state, directory = _saved(tmp_path)
    later = _rows(2, 3)(buffer, jax.tree.map(jnp.copy, state), 99)

    def intact() -> None:
        assert _same(eqx_replay.load_state(directory, buffer, EXAMPLE), state)

    # A URL: refused (Orbax made a local directory `gs:` and failed in TensorStore).
    url = r"`(save|load)_state`: `directory` must be a local path; got the URL 'gs://b/ckpt'"
    with pytest.raises(ValueError, match=url):
        eqx_replay.save_state("gs://b/ckpt", buffer, state)
    with pytest.raises(ValueError, match=url):
        eqx_replay.load_state("gs://b/ckpt", buffer, EXAMPLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    # A bytes path.
    for call in (
        lambda: eqx_replay.save_state(os.fsencode(directory), buffer, later, overwrite=True),  # type: ignore[arg-type]
        lambda: eqx_replay.load_state(os.fsencode(directory), buffer, EXAMPLE),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match=r"`(save|load)_state`: `directory` must be .* bytes"):
            call()
    intact()

    # A missing parent directory: named by `load_state`, made by `save_state`; one that
    # cannot be made (a file is in the way) is named.
    with pytest.raises(
        FileNotFoundError,
        match=r"`load_state`: no checkpoint at .*/none/ckpt \(its directory .*/none does not",
    ):
        eqx_replay.load_state(tmp_path / "none" / "ckpt", buffer, EXAMPLE)
    eqx_replay.save_state(tmp_path / "made" / "ckpt", buffer, state)
    assert _same(eqx_replay.load_state(tmp_path / "made" / "ckpt", buffer, EXAMPLE), state)
    (tmp_path / "file").write_text("data")
    with pytest.raises(ValueError, match=r"`save_state`: cannot make .*/file/sub, the directory"):
        eqx_replay.save_state(tmp_path / "file" / "sub" / "ckpt", buffer, state)

    # What is not a checkpoint is never replaced, even with `overwrite=True`; an empty
    # directory is.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("keep")
    for target, what in [("file", "a file"), ("data", "a directory without eqx_replay")]:
        with pytest.raises(ValueError, match=rf"`save_state`: .* is not an .* but {what}"):
            eqx_replay.save_state(tmp_path / target, buffer, state, overwrite=True)
    assert (tmp_path / "file").read_text() == "data"
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["keep.txt"]
    with pytest.raises(FileNotFoundError, match=r"`load_state`: no checkpoint at .*/file \(a"):
        eqx_replay.load_state(tmp_path / "file", buffer, EXAMPLE)
    (tmp_path / "empty").mkdir()
    eqx_replay.save_state(tmp_path / "empty", buffer, state, overwrite=True)
    assert _same(eqx_replay.load_state(tmp_path / "empty", buffer, EXAMPLE), state)

    # A symbolic link to a checkpoint: followed by `load_state`; never written through (nor
    # replaced) by `save_state`.
    link = tmp_path / "link"
    link.symlink_to(directory)
    assert _same(eqx_replay.load_state(link, buffer, EXAMPLE), state)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"`save_state`: .*/link is a symbolic link \(to "):
            eqx_replay.save_state(link, buffer, later, overwrite=overwrite)
    assert link.is_symlink() and os.readlink(link) == str(directory)
    intact()

    # A dangling symbolic link.
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"`save_state`: .*/dangling is a symbolic link"):
            eqx_replay.save_state(dangling, buffer, state, overwrite=overwrite)
    with pytest.raises(
        FileNotFoundError,
        match=r"`load_state`: no checkpoint at .*/dangling \(a symbolic link to .*/nowhere",
    ):
        eqx_replay.load_state(dangling, buffer, EXAMPLE)
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()


def _read_line(server: subprocess.Popen[str], stderr: pathlib.Path) -> str:
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line, f"the saver stopped: {stderr.read_text()[-3000:]}"
    return line


def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new_checkpoint(
    tmp_path: pathlib.Path,
) -> None:
    # Children of one server (`checkpoint_saver.py`) save states 1, 2, 3, ... over state 0
    # with `overwrite=True`, and are killed with SIGKILL: at random moments ("wait", mostly
    # inside Orbax's write), and right after their n-th rename (five per save: Orbax's three
    # of its temporary directories, then the swap's two), unlink and rmdir (removing the old
    # checkpoint, or a crash's leftovers), fsync (before the swap). After every kill, the
    # path holds the last state saved or the one being saved, exactly.
    directory = tmp_path / "ckpt"
    buffer = checkpoint_saver.buffer()
    eqx_replay.save_state(directory, buffer, checkpoint_saver.state(0))
    plans = (
        ["wait"] * 12
        + [f"rename {n}" for n in range(1, 10)]
        + [f"unlink {n}" for n in (1, 8, 15)]
        + [f"rmdir {n}" for n in (3, 7)]
        + [f"fsync {n}" for n in (1, 12, 24)]
    )
    random.Random(0).shuffle(plans)
    stderr = tmp_path / "saver.err"
    with open(stderr, "w") as errors:
        server = subprocess.Popen(
            [sys.executable, str(pathlib.Path(checkpoint_saver.__file__)), str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,
        )
    # The server and its children share a process group: a watchdog ends them all.
    watchdog = threading.Timer(240, os.killpg, (server.pid, signal.SIGKILL))
    watchdog.start()
    assert server.stdin is not None
    rng = random.Random(1)
    saved = 0
    outcomes = []
    try:
        for plan in plans:
            server.stdin.write(f"{saved + 1} {plan}\n")
            server.stdin.flush()
            child = int(_read_line(server, stderr).split()[1])
            completed = [saved]
            if plan == "wait":
                completed.append(int(_read_line(server, stderr)))
                threading.Event().wait(rng.uniform(0, 0.15))
                os.kill(child, signal.SIGKILL)
            while not (line := _read_line(server, stderr)).startswith("ended"):
                completed.append(int(line))
            status = int(line.split()[1])
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
                plan,
                stderr.read_text()[-3000:],
            )
            swapping = not directory.exists()
            loaded = eqx_replay.load_state(directory, buffer, checkpoint_saver.EXAMPLE)
            last = max(completed)
            held = [n for n in (last, last + 1) if _same(loaded, checkpoint_saver.state(n))]
            assert held, (plan, last)
            saved = held[0]
            outcomes.append((plan, "swapping" if swapping else saved - last))
    finally:
        server.stdin.close()
        watchdog.cancel()
        try:
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            server.stdout.close()  # pyright: ignore[reportOptionalMemberAccess] # a pipe
    # Kills left the old checkpoint, the new one, and the new one beside the path while the
    # old one was renamed aside (a kill between the swap's renames).
    assert {outcome for _, outcome in outcomes} == {0, 1, "swapping"}, outcomes
    # The next save leaves the new checkpoint alone, with no leftovers beside it.
    eqx_replay.save_state(directory, buffer, checkpoint_saver.state(saved + 1), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "saver.err"]
    assert _same(
        eqx_replay.load_state(directory, buffer, checkpoint_saver.EXAMPLE),
        checkpoint_saver.state(saved + 1),
    )
