"""Exact checkpoints of any buffer's state: `save_state` and `load_state`.

The arrays are written by Orbax (`orbax-checkpoint`, over TensorStore: sharded and
multi-host arrays). Next to them, as JSON, goes what the state is: the buffer's kind and
configuration, each leaf's path, shape and dtype, and a BLAKE2b digest of the bytes of each
leaf (of each part of a sharded leaf). Loading checks all of it before and after reading, so
a checkpoint of another kind, configuration or experience structure, or a damaged one, is a
clear error rather than a different state. Nothing is pickled.

A save never removes the only complete checkpoint: it writes the new one beside the old
(`<directory>.eqx_replay-new`), then swaps them by renames; `load_state` reads the new one
there if a crash came between the renames, and the next save finishes the swap and removes
what a crash left.

Orbax is imported when these functions are called (the `io` extra): `import eqx_replay`
does not need it.
"""

import dataclasses
import functools as ft
import gc
import hashlib
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from jaxtyping import PyTree

from ._abstract_trajectory import AbstractTrajectoryState
from ._base import AbstractBuffer
from ._checks import check_example
from ._checksums_v1 import checksum_list
from ._frames import FrameStack, FrameStackState
from ._jit import _deleted
from ._sharding import Shards, state_specs


_FORMAT = "eqx_replay.state"
_VERSION = 2
# Checkpoints of format 1 (two 32-bit sums per leaf instead of digests) are still read.
_VERSION_1 = 1
_ARRAYS = "state"
_DESCRIPTION = "eqx_replay"
# Bytes per chunk of a saved array.
_CHUNK_BYTES = 16 << 20
# Beside `directory`: the new checkpoint until it is swapped in, and the old one while it is
# swapped out. Orbax writes the new one under its own temporary name first.
_NEW = ".eqx_replay-new"
_OLD = ".eqx_replay-old"
_ORBAX_TEMPORARY = ".orbax-checkpoint-tmp"
# A part's digest: BLAKE2b-256 in BLAKE2's tree mode (its leaves BLAKE2b-512 of 4 MiB
# pieces), so that a part's pieces are hashed in parallel (hashlib releases the GIL); what
# hashing adds to a save is in `benchmarks/checkpoint_throughput.py`.
_DIGEST_SIZE = 32
_INNER_SIZE = 64
_PIECE_BYTES = 4 << 20


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
    if isinstance(value, FrameStack):
        return {
            "size": value.size,
            "axis": value.axis,
            "padding": value.padding,
            "check": value.check,
        }
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


def _range(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """A part's index (a shard's slices) as `(start, stop)` per axis."""
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


_Range = tuple[tuple[int, int], ...]


def _parts(placement: jax.sharding.Sharding, shape: tuple[int, ...]) -> dict[_Range, int]:
    """The distinct parts of a leaf of `shape` placed by `placement` (as the buffer's `init`
    places it), in order, each with the process that hashes it: that of the first device
    holding it. Digests are of these parts whatever the state's own layout, so that a load
    (which places the state as `init` does) finds each part's digest."""
    owners: dict[_Range, int] = {}
    for device, index in sorted(
        placement.devices_indices_map(shape).items(), key=lambda item: item[0].id
    ):
        owners.setdefault(_range(index, shape), device.process_index)
    return dict(sorted(owners.items()))


def _part_data(where: str, name: str, leaf: Any, part: _Range) -> Any:
    """The data of `part` of a leaf: the shard that holds exactly it when there is one (read
    in place), otherwise sliced out of the leaf."""
    if isinstance(leaf, jax.Array):
        for shard in leaf.addressable_shards:
            if _range(shard.index, leaf.shape) == part:
                return shard.data
        if not leaf.is_fully_addressable:
            raise ValueError(
                f"`{where}`: state leaf {name} is split over the processes otherwise than "
                "this buffer's `init` places it, so no process holds its part "
                f"{[list(axis) for axis in part]}: save the state as the buffer placed it"
            )
    return leaf[tuple(slice(start, stop) for start, stop in part)]


def _digest(part: Any, pool: ThreadPoolExecutor) -> bytes:
    """The digest of a part's bytes, in C order, as handed to Orbax to write: a two-level
    BLAKE2b tree (its root over the digests of the pieces). On the CPU the bytes are read
    in place; from an accelerator the part (a whole shard) is copied to host memory, one
    part at a time, before Orbax copies it again to write it."""
    data = np.ascontiguousarray(np.asarray(part)).reshape(-1).view(np.uint8)
    starts = range(0, max(1, data.size), _PIECE_BYTES)
    node = ft.partial(
        hashlib.blake2b, fanout=0, depth=2, leaf_size=_PIECE_BYTES, inner_size=_INNER_SIZE
    )

    def piece(i: int) -> bytes:
        last = i == len(starts) - 1
        chunk = data[starts[i] : starts[i] + _PIECE_BYTES].data
        return node(chunk, node_offset=i, node_depth=0, last_node=last).digest()

    root = node(digest_size=_DIGEST_SIZE, node_depth=1, last_node=True)
    for digest in pool.map(piece, range(len(starts))):
        root.update(digest)
    return root.digest()


def _save_digests(
    where: str, names: list[str], leaves: list[Any], placements: list[jax.sharding.Sharding]
) -> list[list[dict[str, Any]]]:
    """Each leaf's parts (as the buffer's `init` places it) with the digest of each, hashed
    by one process each and gathered, so that every process writes the same description."""
    parts = [_parts(placement, np.shape(leaf)) for leaf, placement in zip(leaves, placements)]
    rows = {(k, r): i for i, (k, r) in enumerate((k, r) for k, rs in enumerate(parts) for r in rs)}
    table = np.zeros((len(rows), _DIGEST_SIZE), np.uint8)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for k, (name, leaf) in enumerate(zip(names, leaves)):
            for r, owner in parts[k].items():
                if owner == jax.process_index():
                    data = _part_data(where, name, leaf, r)
                    table[rows[k, r]] = np.frombuffer(_digest(data, pool), np.uint8)
    if jax.process_count() > 1:
        # Each row was filled by one process; the others hold zeros there.
        table = np.bitwise_or.reduce(multihost_utils.process_allgather(table), axis=0)
    return [
        [
            {"index": [list(axis) for axis in r], "blake2b": table[rows[k, r]].tobytes().hex()}
            for r in rs
        ]
        for k, rs in enumerate(parts)
    ]


def _matches(
    leaf: jax.Array, saved: dict[tuple[tuple[int, int], ...], str], pool: ThreadPoolExecutor
) -> bool:
    """Whether every part of `leaf` that this process holds has the digest saved for it
    (each part is held, and so checked, by at least one process)."""
    seen: dict[tuple[tuple[int, int], ...], bool] = {}
    for shard in leaf.addressable_shards:
        r = _range(shard.index, leaf.shape)
        if r not in seen:
            seen[r] = saved.get(r) == _digest(shard.data, pool).hex()
    return all(seen.values())


def _check_digests(
    where: str, path: str, names: list[str], leaves: list[jax.Array], saved: list[Any]
) -> None:
    """Raises naming the first leaf whose bytes read differ from the bytes written, on
    every process alike."""
    file = os.path.join(path, _DESCRIPTION, "metadata")
    try:
        digests = [
            {tuple(tuple(axis) for axis in part["index"]): part["blake2b"] for part in parts}
            for parts in saved
        ]
    except (KeyError, TypeError):
        raise ValueError(f"`{where}`: {path} is damaged: {file} has no valid 'digests'") from None
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        bad = np.array([not _matches(leaf, d, pool) for leaf, d in zip(leaves, digests)], np.uint8)
    if jax.process_count() > 1:
        bad = multihost_utils.process_allgather(bad).max(axis=0)
    for name, wrong in zip(names, bad):
        if wrong:
            raise ValueError(
                f"`{where}`: {path} is damaged: state leaf {name} does not match the BLAKE2b "
                "digest of its bytes written with it"
            )


def _check_dtypes(where: str, leaves_with_paths: list[tuple[Any, Any]]) -> None:
    """Refuses, before anything is written, a leaf whose dtype TensorStore (Orbax's storage)
    cannot hold, such as uint4 (Orbax's own error came from deep inside its write)."""
    import tensorstore as ts

    for p, x in leaves_with_paths:
        name = jnp.dtype(x.dtype).name
        try:
            ts.dtype(name)
        except (TypeError, ValueError):
            raise TypeError(
                f"`{where}`: state leaf {_leaf_name(p)} has dtype {name}, which a checkpoint "
                "cannot hold (TensorStore, Orbax's storage, has no such type); store it as "
                "another dtype"
            ) from None


def _check_buffer(where: str, buffer: object) -> AbstractBuffer:
    if not isinstance(buffer, AbstractBuffer):
        raise TypeError(
            f"`{where}`: `buffer` must be an eqx_replay buffer (TrajectoryBuffer, FlatBuffer, "
            f"..., TrajectoryQueue); got {type(buffer).__name__}"
        )
    return buffer


def _local_path(where: str, directory: object) -> str:
    """`directory` as an absolute local path. Bytes and URLs are refused: Orbax would make
    `gs://bucket/x` a local directory `gs:/bucket/x` while TensorStore read it as a URL."""
    path = os.fspath(directory) if isinstance(directory, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise TypeError(
            f"`{where}`: `directory` must be a local path, a str or an os.PathLike of str; got "
            f"{type(directory).__name__} {directory!r}"
        )
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path):
        raise ValueError(
            f"`{where}`: `directory` must be a local path; got the URL {path!r} (remote "
            "storage is not supported: use a local or mounted directory)"
        )
    return os.path.abspath(path)


def _holds(path: str) -> bool:
    """Whether `path` holds a checkpoint: its description is written inside Orbax's temporary
    directory, so a directory renamed into place with it is complete."""
    return os.path.isfile(os.path.join(path, _DESCRIPTION, "metadata"))


def _found(path: str) -> str:
    """Where the checkpoint saved at `path` is: there, or beside it if a crash interrupted a
    save between its renames (the old one renamed aside, the new one not yet in place)."""
    new = path + _NEW
    return new if not _holds(path) and _holds(new) else path


def _check_target(where: str, path: str, overwrite: bool) -> None:
    """A save writes where nothing is, or with `overwrite=True` replaces a checkpoint or an
    empty directory; never a symbolic link (what it points to, or the link itself) or data
    that is not a checkpoint."""
    if os.path.islink(path):
        raise ValueError(
            f"`{where}`: {path} is a symbolic link (to {os.readlink(path)}); `directory` must "
            "be the checkpoint's own path (a save replaces it by renames, which would replace "
            "the link): save to the directory it points to, or remove the link"
        )
    if not (os.path.lexists(path) or _holds(path + _NEW)):
        return
    if not overwrite:
        raise ValueError(
            f"`{where}`: {path} already exists; pass `overwrite=True` to replace it, or "
            "save to a new directory"
        )
    if os.path.exists(path) and not (_holds(path) or _is_empty_directory(path)):
        what = "a directory without " + os.path.join(_DESCRIPTION, "metadata")
        raise ValueError(
            f"`{where}`: {path} is not an eqx_replay checkpoint but "
            f"{what if os.path.isdir(path) else 'a file'}; `overwrite=True` replaces only a "
            "checkpoint written by `save_state` (or an empty directory): move it away "
            "yourself, or save elsewhere"
        )


def _is_empty_directory(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def _make_parent(where: str, path: str) -> None:
    """Makes the directory that will hold the checkpoint, as Orbax did."""
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"`{where}`: cannot make {parent}, the directory to hold {path} "
            f"({type(error).__name__}: {error})"
        ) from None


def _remove(path: str) -> None:
    """Removes what is at `path`: a symbolic link itself, never what it points to."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def _swap(new: str, path: str) -> None:
    """Puts the complete checkpoint `new` (beside `path`) at `path`. At every instant a
    complete checkpoint is at `path`, or at `new` where `load_state` then looks: the old
    one is renamed aside, the new one into place, and only then is the old one removed."""
    old = path + _OLD
    _remove(old)
    if os.path.lexists(path):
        os.rename(path, old)
    os.rename(new, path)
    _fsync(os.path.dirname(path))
    _remove(old)


def _tidy(path: str) -> None:
    """Finishes a swap that a crash interrupted, then removes what crashed saves left beside
    `path` (never the only complete checkpoint: that is at `path` by then)."""
    new = path + _NEW
    if _holds(new) and not _holds(path):
        _swap(new, path)
    parent, name = os.path.split(new)
    # Orbax names its temporary directory `<name>.orbax-checkpoint-tmp`, in some versions
    # followed by a timestamp.
    unfinished = [
        os.path.join(parent, entry)
        for entry in os.listdir(parent)
        if entry.startswith(name + _ORBAX_TEMPORARY)
    ]
    for leftover in (*unfinished, new, path + _OLD):
        _remove(leftover)


def _on_primary(name: str, step: Callable[[], None]) -> None:
    """Runs `step` on the first process alone (renames and removals must happen once), and
    makes every process wait until it is done."""
    if jax.process_index() == 0:
        step()
    _barrier(name)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"eqx_replay.save_state.{name}")


def save_state(
    directory: str | os.PathLike[str],
    buffer: AbstractBuffer,
    state: PyTree,
    *,
    overwrite: bool = False,
) -> None:
    """Writes `state`, a state of `buffer`, to a directory, exactly.

    The state is neither changed nor consumed: keep using it after the call. The write is
    complete when the call returns. It is written beside `directory` and renamed into place
    only when complete and flushed to the disk, so at every instant one complete checkpoint
    (the old or the new one; before a first save completes, none) is what `load_state` of
    `directory` reads: at `directory`, or beside it (`<directory>.eqx_replay-new`) between
    the two renames of the swap. The next save cleans up what a crash left. Do not load
    from another process while saving to the same directory: a read that began before the
    swap can find its files moved.

    **Arguments:**

    - `directory`: where to write, a local path (missing parent directories are made). It
      must not exist unless `overwrite=True`, and must not be a symbolic link.
    - `buffer`: the buffer whose `init` made the state (its kind and configuration are
      recorded and checked by `load_state`).
    - `state`: the state, of any kind (sharded states too: each process writes its
      devices' parts; call it on every process).
    - `overwrite`: replace the checkpoint at `directory` (or an empty directory); anything
      else there is an error, and is left as it is.

    **Raises:** `TypeError`/`ValueError`, before anything is written, for a state this
    buffer's `init` did not make, a state whose arrays were donated to an earlier call, a
    leaf of a dtype a checkpoint cannot hold (uint4), an existing `directory` (without
    `overwrite=True`, or that is not a checkpoint), a symbolic link, a URL or a bytes path.
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
    path = _local_path(where, directory)
    _check_target(where, path, overwrite)
    ocp = _orbax()
    leaves_with_paths = jtu.tree_flatten_with_path(state)[0]
    _check_dtypes(where, leaves_with_paths)
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
        "digests": _save_digests(
            where,
            [_leaf_name(p) for p, _ in leaves_with_paths],
            leaves,
            _placements(buffer, state),
        ),
    }
    _make_parent(where, path)
    new = path + _NEW
    _on_primary("tidy", lambda: _tidy(path))
    checkpointer = _checkpointer(ocp)
    checkpointer.save(
        new,
        args=ocp.args.Composite(
            **{
                _ARRAYS: ocp.args.PyTreeSave(
                    leaves, save_args=[ocp.SaveArgs(chunk_byte_size=_CHUNK_BYTES) for _ in leaves]
                ),
                _DESCRIPTION: ocp.args.JsonSave(description),
            }
        ),
    )
    checkpointer.close()
    _sync(new)
    _barrier("synced")
    _on_primary("swapped", lambda: _swap(new, path))


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
    """Flushes every file of the checkpoint, and the directory entries, to the disk, before
    it is renamed into place: what is renamed survives a power loss."""
    for root, _, names in os.walk(path):
        for name in [*names, "."]:
            _fsync(os.path.join(root, name))
    _fsync(os.path.dirname(path))


def _fsync(path: str) -> None:
    """Flushes a file, or a directory's entries (the renames done in it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
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


def _no_checkpoint(where: str, path: str) -> FileNotFoundError:
    """The error for a `path` where no checkpoint is, saying what is there instead."""
    parent, name = os.path.split(path)
    hint = ""
    if os.path.islink(path):
        hint = f" (a symbolic link to {os.readlink(path)}, which holds none)"
    elif os.path.exists(path):
        hint = " (a file)"
    elif not os.path.isdir(parent):
        hint = f" (its directory {parent} does not exist)"
    else:
        unfinished = [
            other
            for other in sorted(os.listdir(parent))
            if other.startswith(name + ".") and _ORBAX_TEMPORARY in other
        ]
        if unfinished:
            hint = f" ({unfinished[0]} is there: a save that did not complete)"
    return FileNotFoundError(f"`{where}`: no checkpoint at {path}{hint}")


def _read_description(where: str, path: str) -> dict[str, Any]:
    file = os.path.join(path, _DESCRIPTION, "metadata")
    try:
        description = _read_json(where, path, file)
    except FileNotFoundError:
        raise ValueError(
            f"`{where}`: {path} is not a complete eqx_replay checkpoint: {file} is missing"
        ) from None
    if not isinstance(description, dict) or description.get("format") != _FORMAT:
        raise ValueError(f"`{where}`: {path} is not an eqx_replay checkpoint ({file})")
    version = description.get("version")
    if version not in (_VERSION_1, _VERSION):
        raise ValueError(
            f"`{where}`: {path} was written in checkpoint format version {version}; this "
            f"eqx_replay reads versions {_VERSION_1} and {_VERSION}"
        )
    check = "checksums" if version == _VERSION_1 else "digests"
    for key in ("kind", "configuration", "leaves", check):
        if key not in description:
            raise ValueError(f"`{where}`: {path} is damaged: {file} has no {key!r}")
    if not isinstance(description[check], list) or len(description[check]) != len(
        description["leaves"]
    ):
        raise ValueError(f"`{where}`: {path} is damaged: {file} has no valid {check!r}")
    return description


def _check_version_1(
    where: str,
    path: str,
    buffer: AbstractBuffer,
    names: list[str],
    state: PyTree,
    saved: list[Any],
) -> None:
    """Checks a format-1 checkpoint's leaves against the two 32-bit sums it holds, and
    warns that they can miss damage that format 2's digests catch."""
    sums = checksum_list(buffer.sharding, state)
    for name, got, want in zip(names, sums, saved):
        if got != want:
            raise ValueError(
                f"`{where}`: {path} is damaged: state leaf {name} does not match the "
                f"checksum written with it (format {_VERSION_1}: saved {want}, read {got})"
            )
    warnings.warn(
        f"`{where}`: {path} was written in checkpoint format {_VERSION_1}, whose checksums "
        "(two 32-bit sums per leaf) can miss some damage; it matched them. Save it again "
        f"(`save_state(..., overwrite=True)`) to store format {_VERSION}'s BLAKE2b digests",
        stacklevel=3,
    )


def _layout(setting: object) -> object:
    """A configuration setting without what a loaded state is adapted to: a
    `FrameStack`'s `check` (see `_checked_as`)."""
    if isinstance(setting, dict) and "check" in setting:
        return {key: value for key, value in setting.items() if key != "check"}
    return setting


def _checked_as(state: PyTree, check: bool) -> PyTree:
    """A frame-stacked state whose `frame_stack.mismatches` is as a `FrameStack` with
    `check` keeps it: counts (zeros where there were none), or None."""
    kept = state._frame_stack if isinstance(state, AbstractTrajectoryState) else None
    if not isinstance(kept, FrameStackState) or (kept.mismatches is not None) == check:
        return state
    starts = kept.episode_starts
    rows = starts.shape[0]
    if isinstance(starts, jax.ShapeDtypeStruct):  # placed by `_placements` when read
        mismatches = jax.ShapeDtypeStruct((rows,), jnp.int32)
    else:  # split over the rows as `episode_starts` is
        placement = starts.sharding
        if isinstance(placement, NamedSharding):
            placement = NamedSharding(placement.mesh, PartitionSpec(*placement.spec[:1]))
        mismatches = jax.device_put(jnp.zeros((rows,), jnp.int32), placement)
    return eqx.tree_at(  # no constructor: `expected` holds `jax.ShapeDtypeStruct`s
        lambda s: s.frame_stack.mismatches,
        state,
        mismatches if check else None,
        is_leaf=lambda x: x is None,
    )


def _saved_check(description: dict[str, Any]) -> bool | None:
    """Whether a saved frame-stacked state keeps `frame_stack.mismatches` (None for a
    state without frames), from its leaves: checkpoints written before the setting was
    recorded kept it always."""
    if not isinstance(description["configuration"].get("frame_stack"), dict):
        return None
    return any(
        str(leaf.get("path", "")).endswith(".frame_stack.mismatches")
        for leaf in description["leaves"]
    )


def _own_check(buffer: AbstractBuffer) -> bool | None:
    """The `check` of the buffer's `FrameStack` (None without one)."""
    setting = _configuration(buffer).get("frame_stack")
    return bool(setting["check"]) if isinstance(setting, dict) else None


def _compare(where: str, description: dict[str, Any], buffer: AbstractBuffer) -> None:
    kind = type(buffer).__name__
    if description["kind"] != kind:
        raise ValueError(
            f"`{where}`: the checkpoint holds a {description['kind']}'s state; the buffer is "
            f"a {kind}"
        )
    saved, own = description["configuration"], _configuration(buffer)
    for name in sorted(set(saved) | set(own)):
        if _layout(saved.get(name)) != _layout(own.get(name)):
            raise ValueError(
                f"`{where}`: the checkpoint's {kind} has another configuration: {name}: "
                f"saved {saved.get(name)!r}, buffer {own.get(name)!r}"
            )


def _placements(buffer: AbstractBuffer, expected: PyTree) -> list[jax.sharding.Sharding]:
    """Where `buffer.init` places each leaf: on the default device, or for a sharded buffer
    rows split over its mesh and the rest as `_sharding.state_specs` says."""
    sharding = buffer.sharding
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

    - `directory`: what `save_state` wrote, or a symbolic link to it (followed).
    - `buffer`: a buffer of the same kind and configuration as the one saved (it may
      differ in `donate_state`; a sharded buffer may use another mesh with as many devices:
      the state is placed as this buffer's `init` places it).
    - `example`: one step shaped like the saved experience, as given to `init` (arrays or
      `jax.ShapeDtypeStruct`s).

    **Returns:** the state, placed as `buffer.init(example)` would place it.

    **Raises:** `FileNotFoundError` if there is no checkpoint at `directory` (a first save
    that did not complete leaves none; one interrupted while replacing a checkpoint leaves
    the old or the new one, which is read); `ValueError` naming what differs if the
    checkpoint holds another kind, configuration or experience structure, and if it is
    incomplete or damaged (the bytes of every leaf are checked against the BLAKE2b digest
    written with them); `TypeError`/`ValueError` for a bytes path or a URL.
    """
    where = "load_state"
    buffer = _check_buffer(where, buffer)
    given = _local_path(where, directory)
    path = _found(os.path.realpath(given))
    if not os.path.isdir(path):
        raise _no_checkpoint(where, given)
    description = _read_description(where, path)
    _compare(where, description, buffer)
    # One step of zeros for each `jax.ShapeDtypeStruct`: `init`'s checks want arrays.
    example = jtu.tree_map(
        lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x,
        example,
    )
    check_example(where, example)
    expected = jax.eval_shape(buffer.init, example)
    own_check = _own_check(buffer)
    saved_check = _saved_check(description)
    if saved_check is not None:  # the state as saved; adapted to this buffer once read
        expected = _checked_as(expected, saved_check)
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
    names = [_leaf_name(p) for p, _ in leaves_with_paths]
    state = jtu.tree_unflatten(structure, leaves)
    if description["version"] == _VERSION_1:
        _check_version_1(where, path, buffer, names, state, description["checksums"])
    else:
        _check_digests(where, path, names, leaves, description["digests"])
    if own_check is not None:
        state = _checked_as(state, own_check)
    return state
