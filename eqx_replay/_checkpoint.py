"""Exact checkpoints of any buffer's state: `save_state` and `load_state`.

The arrays are written by Orbax (`orbax-checkpoint`, over TensorStore: sharded and
multi-host arrays, an atomic rename when the save completes). Next to them, as JSON, goes
what the state is: the buffer's kind and configuration, each leaf's path, shape and dtype,
and a checksum of each leaf. Loading checks all of it before and after reading, so a
checkpoint of another kind, configuration or experience structure, or a damaged one, is a
clear error rather than a different state. Nothing is pickled.

Orbax is imported when these functions are called (the `io` extra): `import eqx_replay`
does not need it.
"""

import dataclasses
import functools as ft
import gc
import json
import os
import sys
from typing import Any

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from jaxtyping import Array, PyTree, UInt32

from ._base import AbstractBuffer
from ._checks import check_example
from ._jit import _deleted
from ._sharding import run, Shards, state_specs


_FORMAT = "eqx_replay.state"
_VERSION = 1
_ARRAYS = "state"
_DESCRIPTION = "eqx_replay"
# Bytes per chunk of a saved array.
_CHUNK_BYTES = 16 << 20


def _orbax() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "eqx_replay.save_state and load_state need orbax-checkpoint: "
            "pip install 'eqx_replay[io]'"
        ) from error
    return ocp


def _setting(value: object) -> object:
    """A configuration value as JSON data: what decides the state's layout, comparable."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, NamedSharding):
        axis = value.spec[0] if len(value.spec) else None
        names = axis if isinstance(axis, tuple) else (axis,)
        count = int(np.prod([value.mesh.shape[a] for a in names if a is not None]))
        return f"sharded over {count} devices"
    if callable(value):
        return "a function"
    return repr(value)


def _configuration(buffer: AbstractBuffer) -> dict[str, object]:
    """The buffer's constructor arguments that decide what its state holds (not
    `donate_state`, which only decides how calls treat it)."""
    return {
        field.name: _setting(getattr(buffer, field.name))
        for field in dataclasses.fields(buffer)
        if field.init and field.name != "donate_state"
    }


def _leaf_name(path: tuple[Any, ...]) -> str:
    return jtu.keystr(path)


def _describe(leaf: Any) -> str:
    return f"{jnp.dtype(leaf.dtype).name}{list(leaf.shape)}"


# Elements checksummed at a time: only this many are converted to words at once.
_BLOCK = 1 << 20


def _words(x: Array) -> Array:
    """Elements as unsigned 32-bit words (a 64-bit element as two, in order)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = x.dtype.itemsize * 8
    unsigned = lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}"))
    if bits == 64:
        return lax.bitcast_convert_type(unsigned, jnp.uint32).reshape(-1)
    return unsigned.astype(jnp.uint32)


def _block_sums(block: Array, start: Array) -> UInt32[Array, "2"]:
    """The two sums of a 1-d block whose first element is element `start` of its leaf."""
    words = _words(block)
    per = words.shape[0] // max(1, block.shape[0])
    position = start * jnp.uint32(per) + lax.iota(jnp.uint32, words.shape[0])
    first = jnp.sum(words * (2 * position + 1), dtype=jnp.uint32)
    second = jnp.sum(
        (words ^ jnp.uint32(0x5BD1E995)) * (position * jnp.uint32(0x9E3779B1) | 1),
        dtype=jnp.uint32,
    )
    return jnp.stack([first, second])


def _leaf_sums(leaf: Array, offset: Array) -> UInt32[Array, "2"]:
    """Two position-weighted sums modulo 2**32 of a leaf's words, with odd weights: a change
    to any one element always changes both; changes that cancel in both have odds of about
    2**-64. Positions count from `offset` (where this part starts in the whole leaf), so the
    sums of the parts of a sharded leaf add up to the whole leaf's. Block by block, so
    that only one block at a time is converted to words."""
    flat = leaf.reshape(-1)
    size = flat.shape[0]
    whole = size // _BLOCK
    sums = jnp.zeros(2, jnp.uint32)
    if whole:
        sums = lax.fori_loop(
            0,
            whole,
            lambda b, acc: (
                acc
                + _block_sums(
                    lax.dynamic_slice_in_dim(flat, b * _BLOCK, _BLOCK),
                    offset + jnp.uint32(_BLOCK) * b.astype(jnp.uint32),
                )
            ),
            sums,
        )
    if size % _BLOCK or not size:
        sums = sums + _block_sums(flat[whole * _BLOCK :], offset + jnp.uint32(whole * _BLOCK))
    return sums


@ft.partial(jax.jit, static_argnums=(0, 1))
def _checksums(
    shards: Shards | None, specs: tuple[PartitionSpec, ...], leaves: list[Array]
) -> list[UInt32[Array, "2"]]:
    """Each leaf's sums, computed where the leaf is: a sharded state's on each device for
    its part (`specs`: how each leaf is split), added up across the devices (a replicated
    leaf counted once)."""
    if shards is None:
        return [_leaf_sums(leaf, jnp.uint32(0)) for leaf in leaves]
    axis = shards.axis

    def local(*parts: Array) -> list[Array]:
        index = lax.axis_index(axis).astype(jnp.uint32)
        sums = []
        for part, spec in zip(parts, specs):
            if len(spec):
                mine = _leaf_sums(part, index * jnp.uint32(part.size % 2**32))
            else:
                mine = jnp.where(index == 0, _leaf_sums(part, jnp.uint32(0)), jnp.uint32(0))
            sums.append(lax.psum(mine, axis))
        return sums

    return run(shards, local, tuple(leaves), tuple(specs), [PartitionSpec()] * len(leaves))


def _checksum_list(buffer: AbstractBuffer, state: PyTree) -> list[list[int]]:
    leaves = jtu.tree_leaves(state)
    sharding = getattr(buffer, "sharding", None)
    if sharding is None:
        shards, specs = None, ()
    else:
        shards = Shards(sharding, sharding.spec[0], 0)
        specs = tuple(
            jtu.tree_leaves(
                state_specs(shards, state), is_leaf=lambda x: isinstance(x, PartitionSpec)
            )
        )
    return [[int(v) for v in np.asarray(s)] for s in _checksums(shards, specs, leaves)]


def _check_buffer(where: str, buffer: object) -> AbstractBuffer:
    if not isinstance(buffer, AbstractBuffer):
        raise TypeError(
            f"`{where}`: `buffer` must be an eqx_replay buffer (TrajectoryBuffer, FlatBuffer, "
            f"..., TrajectoryQueue); got {type(buffer).__name__}"
        )
    return buffer


def save_state(
    directory: str | os.PathLike[str],
    buffer: AbstractBuffer,
    state: PyTree,
    *,
    overwrite: bool = False,
) -> None:
    """Writes `state`, a state of `buffer`, to a new directory, exactly.

    The state is neither changed nor consumed: keep using it after the call. The write is
    complete when the call returns; it appears under `directory` only then (Orbax writes a
    temporary directory and renames it), so a save interrupted by a crash leaves no
    checkpoint there rather than a partial one.

    **Arguments:**

    - `directory`: where to write; it must not exist unless `overwrite=True`.
    - `buffer`: the buffer whose `init` made the state (its kind and configuration are
      recorded and checked by `load_state`).
    - `state`: the state, of any kind (sharded states too: each process writes its
      devices' parts; call it on every process).
    - `overwrite`: replace an existing directory.

    **Raises:** `TypeError`/`ValueError` for a state this buffer's `init` did not make, a
    state whose arrays were donated to an earlier call, or an existing `directory`.
    """
    where = "save_state"
    buffer = _check_buffer(where, buffer)
    buffer._check_state(where, state)
    if _deleted(state):
        raise ValueError(
            f"`{where}`: the state's arrays have been deleted: the state was donated to an "
            "earlier call (`add` or `set_priorities`). Save the newest state, the one that "
            "call returned."
        )
    path = os.path.abspath(os.fspath(directory))
    if os.path.exists(path) and not overwrite:
        raise ValueError(
            f"`{where}`: {path} already exists; pass `overwrite=True` to replace it, or "
            "save to a new directory"
        )
    ocp = _orbax()
    leaves_with_paths = jtu.tree_flatten_with_path(state)[0]
    leaves = [leaf for _, leaf in leaves_with_paths]
    description = {
        "format": _FORMAT,
        "version": _VERSION,
        "kind": type(buffer).__name__,
        "state": type(state).__name__,
        "configuration": _configuration(buffer),
        "leaves": [
            {"path": _leaf_name(p), "dtype": jnp.dtype(x.dtype).name, "shape": list(x.shape)}
            for p, x in leaves_with_paths
        ],
        "checksums": _checksum_list(buffer, state),
    }
    checkpointer = _checkpointer(ocp)
    checkpointer.save(
        path,
        args=ocp.args.Composite(
            **{
                _ARRAYS: ocp.args.PyTreeSave(
                    leaves, save_args=[ocp.SaveArgs(chunk_byte_size=_CHUNK_BYTES) for _ in leaves]
                ),
                _DESCRIPTION: ocp.args.JsonSave(description),
            }
        ),
        force=overwrite,
    )
    checkpointer.close()
    _sync(path)


def _checkpointer(ocp: Any) -> Any:
    """Orbax's checkpointer for a state: arrays uncompressed (a replay buffer's experience
    rarely compresses, and compressing costs more than the disk's time), chunked so that
    reads and writes proceed in parallel; the description as JSON."""
    return ocp.Checkpointer(
        ocp.CompositeCheckpointHandler(
            **{
                _ARRAYS: ocp.PyTreeCheckpointHandler(use_compression=False),
                _DESCRIPTION: ocp.JsonCheckpointHandler(),
            }
        )
    )


def _sync(path: str) -> None:
    """Flushes every file of the checkpoint, and the directory entries, to the disk: the
    checkpoint survives a power loss once `save_state` returns."""
    for root, _, names in os.walk(path):
        for name in [*names, "."]:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_json(where: str, path: str, file: str) -> Any:
    """The JSON in `file` of the checkpoint at `path`; `FileNotFoundError` if it is not
    there, and a `ValueError` naming it if it cannot be read or parsed."""
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise ValueError(
            f"`{where}`: {path} is damaged: {file} is not readable JSON ({error})"
        ) from None


def _read_description(where: str, path: str) -> dict[str, Any]:
    if not os.path.isdir(path):
        unfinished = [
            name
            for name in sorted(os.listdir(os.path.dirname(path) or "."))
            if name.startswith(os.path.basename(path) + ".orbax-checkpoint-tmp")
        ]
        hint = f" ({unfinished[0]} is there: a save that did not complete)" if unfinished else ""
        raise FileNotFoundError(f"`{where}`: no checkpoint at {path}{hint}")
    file = os.path.join(path, _DESCRIPTION, "metadata")
    try:
        description = _read_json(where, path, file)
    except FileNotFoundError:
        raise ValueError(
            f"`{where}`: {path} is not a complete eqx_replay checkpoint: {file} is missing"
        ) from None
    if not isinstance(description, dict) or description.get("format") != _FORMAT:
        raise ValueError(f"`{where}`: {path} is not an eqx_replay checkpoint ({file})")
    if description.get("version") != _VERSION:
        raise ValueError(
            f"`{where}`: {path} was written in checkpoint format version "
            f"{description.get('version')}; this eqx_replay reads version {_VERSION}"
        )
    for key in ("kind", "configuration", "leaves", "checksums"):
        if key not in description:
            raise ValueError(f"`{where}`: {path} is damaged: {file} has no {key!r}")
    return description


def _compare(where: str, description: dict[str, Any], buffer: AbstractBuffer) -> None:
    kind = type(buffer).__name__
    if description["kind"] != kind:
        raise ValueError(
            f"`{where}`: the checkpoint holds a {description['kind']}'s state; the buffer is "
            f"a {kind}"
        )
    saved, own = description["configuration"], _configuration(buffer)
    for name in sorted(set(saved) | set(own)):
        if saved.get(name) != own.get(name):
            raise ValueError(
                f"`{where}`: the checkpoint's {kind} has another configuration: {name}: "
                f"saved {saved.get(name)!r}, buffer {own.get(name)!r}"
            )


def _placements(buffer: AbstractBuffer, expected: PyTree) -> list[jax.sharding.Sharding]:
    """Where `buffer.init` places each leaf: on the default device, or for a sharded buffer
    rows split over its mesh and the rest as `_sharding.state_specs` says."""
    sharding = getattr(buffer, "sharding", None)
    if sharding is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return [device for _ in jtu.tree_leaves(expected)]
    shards = Shards(sharding, sharding.spec[0], 0)
    return [
        NamedSharding(sharding.mesh, spec)
        for spec in jtu.tree_leaves(
            state_specs(shards, expected), is_leaf=lambda x: isinstance(x, PartitionSpec)
        )
    ]


def _check_array_json(where: str, path: str) -> None:
    """The JSON files that Orbax reads first (its metadata, the arrays' metadata), parsed
    here: a damaged one is named, and Orbax's reads do not start (Orbax's own error for one
    named no file, and its abandoned reads printed "Event loop is closed" tracebacks)."""
    arrays = os.path.join(path, _ARRAYS)
    metadatas = os.path.join(arrays, "array_metadatas")
    files = [os.path.join(arrays, "_METADATA")]
    if os.path.isdir(metadatas):
        files += [os.path.join(metadatas, name) for name in sorted(os.listdir(metadatas))]
    for file in files:
        try:
            _read_json(where, path, file)
        except FileNotFoundError:
            continue  # Orbax's own error says what is missing


def _collect_orphans() -> None:
    """After a failed read, Orbax leaves coroutines to the garbage collector after their
    event loop has closed, and Python would print an "Exception ignored" report for each
    when they are collected: collect them now, quietly."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def load_state(directory: str | os.PathLike[str], buffer: AbstractBuffer, example: PyTree) -> Any:
    """Reads a state written by `save_state`: the same state, leaf for leaf (write head,
    fullness, priorities, generations, read head, ...), which continues exactly as the
    saved one would have.

    **Arguments:**

    - `directory`: what `save_state` wrote.
    - `buffer`: a buffer of the same kind and configuration as the one saved (it may
      differ in `donate_state`; a sharded buffer may use another mesh with as many devices:
      the state is placed as this buffer's `init` places it).
    - `example`: one step shaped like the saved experience, as given to `init` (arrays or
      `jax.ShapeDtypeStruct`s).

    **Returns:** the state, placed as `buffer.init(example)` would place it.

    **Raises:** `FileNotFoundError` if there is no checkpoint at `directory` (a save that
    did not complete leaves none); `ValueError` naming what differs if the checkpoint holds
    another kind, configuration or experience structure, and if it is incomplete or
    damaged (every leaf is checked against the checksum written with it).
    """
    where = "load_state"
    buffer = _check_buffer(where, buffer)
    path = os.path.abspath(os.fspath(directory))
    description = _read_description(where, path)
    _compare(where, description, buffer)
    check_example(where, example)
    expected = jax.eval_shape(buffer.init, example)
    leaves_with_paths, structure = jtu.tree_flatten_with_path(expected)
    saved = description["leaves"]
    saved_names = [leaf.get("path") for leaf in saved]
    own_names = [_leaf_name(p) for p, _ in leaves_with_paths]
    if saved_names != own_names:
        missing = [n for n in saved_names if n not in own_names]
        extra = [n for n in own_names if n not in saved_names]
        raise ValueError(
            f"`{where}`: the example's structure differs from the saved experience: saved "
            f"leaves not in the example's state: {missing or 'none'}; leaves of the "
            f"example's state not saved: {extra or 'none'}"
        )
    for (p, want), leaf in zip(leaves_with_paths, saved):
        got = f"{leaf.get('dtype')}{leaf.get('shape')}"
        if got != _describe(want):
            raise ValueError(
                f"`{where}`: state leaf {_leaf_name(p)}: saved {got}, this buffer with this "
                f"example makes {_describe(want)}"
            )
    ocp = _orbax()
    targets = [
        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement)
        for (_, x), placement in zip(leaves_with_paths, _placements(buffer, expected))
    ]
    _check_array_json(where, path)
    checkpointer = _checkpointer(ocp)
    try:
        restored = checkpointer.restore(
            path,
            args=ocp.args.Composite(
                **{
                    _ARRAYS: ocp.args.PyTreeRestore(
                        targets,
                        restore_args=[ocp.ArrayRestoreArgs(sharding=t.sharding) for t in targets],
                    )
                }
            ),
        )[_ARRAYS]
    except Exception as error:
        _collect_orphans()
        raise ValueError(
            f"`{where}`: {path} is damaged: its arrays could not be read "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error
    finally:
        checkpointer.close()
    leaves = list(restored)
    sums = _checksum_list(buffer, jtu.tree_unflatten(structure, leaves))
    for (p, _), got, want in zip(leaves_with_paths, sums, description["checksums"]):
        if got != want:
            raise ValueError(
                f"`{where}`: {path} is damaged: state leaf {_leaf_name(p)} does not match the "
                f"checksum written with it (saved {want}, read {got})"
            )
    return jtu.tree_unflatten(structure, leaves)
