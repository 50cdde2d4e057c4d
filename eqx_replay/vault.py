"""Vaults: datasets of experience on disk, in Flashbax 0.1.3's Vault format.

`Vault` is a drop-in for `flashbax.vault.Vault`: the same constructor, `write` and `read`,
and the same files, so Flashbax reads what this writes and this reads what Flashbax writes.
A vault is a directory `<rel_dir>/<vault_name>/<vault_uid>` holding `metadata.json` (the
experience structure: each leaf's buffer shape and dtype) and one TensorStore database
(OCDBT) with a zarr array per leaf, shaped `(rows, 10**13, ...)` and extended along time,
plus an array `vault_index` holding the number of steps written.

What differs from Flashbax's, and why:

- A `write` is one atomic transaction: the new steps of every leaf and the new
  `vault_index` are committed together or not at all. A writer killed at any moment leaves
  a vault that opens and reads every completed `write`, with no torn step.
- `write` appends exactly the steps added since the last write, also when the buffer
  wrapped, and when it is exactly full (Flashbax wrote nothing then); a buffer that
  overwrote steps before they were written is an error naming them, not a silent gap.
  What to write is decided from the state's write head and fullness (or the caller's
  count, `added`), never from the data: equal bytes are not "unchanged". Where those
  cannot tell "nothing" from "a whole capacity", `write` asks for `added` rather than guess.
- Paths go to TensorStore as kvstore specs, never as `file://` URLs, which it would decode
  (`%2F` becoming `/`); names that would leave `rel_dir` are refused. A vault is built in a
  directory of its own and renamed into place, and a failed creation leaves nothing behind.
- Reading ranges (`read_range`), streaming chunks (`chunks`), and restoring a buffer's
  state with its capacity (`to_state`), for datasets larger than memory.
- Arrays are chunked along time to suit appends (Flashbax's default chunks re-encode up
  to 16384 steps per leaf on every small write).
- No printing; errors are `ValueError`s that say what was expected and what came.

Needs TensorStore (the `io` extra): `pip install 'eqx_replay[io]'`.
"""

import json
import math
import os
import shutil
import tempfile
import weakref
from ast import literal_eval
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree


try:
    import tensorstore as ts
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("eqx_replay.vault needs tensorstore: pip install 'eqx_replay[io]'") from error

from ._abstract_trajectory import AbstractTrajectoryState
from ._data import AbstractState
from ._queue import TrajectoryQueueState
from ._trajectory import TrajectoryBufferState


__all__ = ["Vault"]

_METADATA = "metadata.json"
# The keys of metadata.json that the vault itself writes (Flashbax's).
_RESERVED = ("version", "structure_shape", "structure_dtype")
_VERSION = 1.2
_TIME_LIMIT = int(10e12)
_COMPRESSION = {"id": "gzip", "level": 5}
_INDEX = "vault_index"
# Bytes of one chunk (all rows, some steps) that appends aim for.
_CHUNK_BYTES = 1 << 18


def _datastore_name(path: tuple[Any, ...]) -> str:
    """Flashbax's datastore name for a leaf: its keys and attribute names, each followed by
    a dot (`obs.`, `info.reward.`). Sequence positions, which Flashbax drops (so two leaves
    of a list share one datastore there), are written as their index."""
    name = ""
    for key in path:
        if isinstance(key, jtu.DictKey):
            name += str(key.key)
        elif isinstance(key, jtu.GetAttrKey):
            name += key.name
        elif isinstance(key, jtu.SequenceKey):
            name += str(key.idx)
        name += "."
    return name


def _serialise(structure: PyTree, leaf: Any) -> Any:
    """The experience structure as JSON data, as Orbax's `serialize_tree` gives it to
    Flashbax: mappings and named fields as objects (sorted keys), sequences as lists."""

    def node(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): node(x[k]) for k in sorted(x)}
        if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
            return [node(v) for v in x]
        children = jtu.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)[0]
        if children and all(len(p) == 1 for p, _ in children) and x is not None:
            if all(isinstance(p[0], (jtu.GetAttrKey, jtu.DictKey)) for p, _ in children):
                named = {_datastore_name(p)[:-1]: v for p, v in children}
                return {k: node(named[k]) for k in sorted(named)}
        return leaf(x)

    return node(structure)


def _leaves(tree: PyTree) -> list[tuple[tuple[Any, ...], Any]]:
    return jtu.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, str))[0]


def _stored(shape: tuple[int, ...], dtype: str) -> str:
    """How a vault leaf is shaped: `float32[4, time, 3]`."""
    return f"{dtype}[{', '.join([str(shape[0]), 'time', *map(str, shape[2:])])}]"


def _aligned(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose data starts on a 64-byte boundary."""
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + 64, np.uint8)
    offset = -raw.ctypes.data % 64
    return raw[offset : offset + size].view(dtype).reshape(shape)


def _arrays(reads: list[tuple[np.ndarray, Any]]) -> list[jax.Array]:
    """The JAX arrays of reads begun by `Vault._read`, once each has completed (on the CPU,
    JAX adopts the memory read into)."""
    for _, done in reads:
        done.result()
    return [jax.device_put(target) for target, _ in reads]


def _error(where: str, message: str) -> ValueError:
    return ValueError(f"`Vault.{where}`: {message}")


def _spec(base: str, name: str) -> dict[str, Any]:
    """The zarr array `name` in the OCDBT database at directory `base`. The base is a file
    kvstore spec, not a `file://` URL: TensorStore would decode a URL's percent escapes."""
    return {
        "driver": "zarr",
        "kvstore": {"driver": "ocdbt", "base": {"driver": "file", "path": base}, "path": name},
    }


def _vault_path(rel_dir: Any, vault_name: Any, vault_uid: Any) -> str:
    """`<cwd>/<rel_dir>/<vault_name>/<vault_uid>`, normalised. `rel_dir` (relative to the
    current directory, or absolute) is the base the user chose; the names must each lead
    into a directory inside the one before, so that no name reaches another vault's files
    or leaves the base."""
    for argument, value in (("rel_dir", rel_dir), ("vault_name", vault_name)):
        if not isinstance(value, (str, os.PathLike)) or "\0" in os.fspath(value):
            raise _error("__init__", f"`{argument}` must be a path without NUL; got {value!r}")
    if not isinstance(vault_uid, str) or "\0" in vault_uid:
        raise _error("__init__", f"`vault_uid` must be a str without NUL; got {vault_uid!r}")
    path = os.path.normpath(os.path.join(os.getcwd(), os.fspath(rel_dir)))
    for argument, name in (("vault_name", os.fspath(vault_name)), ("vault_uid", vault_uid)):
        inside = os.path.normpath(os.path.join(path, name))
        if os.path.isabs(name) or os.path.commonpath([path, inside]) != path or inside == path:
            raise _error(
                "__init__",
                f"`{argument}` must name a directory inside {path}; got {name!r}, which "
                f"resolves to {inside}",
            )
        path = inside
    return path


def _extra_metadata(metadata: Any) -> dict[str, Any]:
    """The user's `metadata`, JSON-able (other values become strings, as in Flashbax).
    Keys the vault writes itself are refused: Flashbax let them replace its own."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise _error("__init__", f"`metadata` must be a dict; got {type(metadata).__name__}")
    reserved = [key for key in _RESERVED if key in metadata]
    if reserved:
        raise _error(
            "__init__",
            f"`metadata` may not set {reserved}: the vault writes {list(_RESERVED)} itself",
        )
    try:
        ready = jtu.tree_map(
            lambda x: x if isinstance(x, (bool, str, int, float, type(None))) else str(x),
            metadata,
        )
        json.dumps(ready)
    except (TypeError, ValueError) as error:
        raise _error("__init__", f"`metadata` cannot be stored as JSON ({error})") from None
    return ready


def _read_metadata(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (OSError, ValueError) as error:
        raise _error("__init__", f"{path} is missing or not JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise _error(
            "__init__", f"{path} holds a JSON {type(metadata).__name__}; expected an object"
        )
    for key in _RESERVED:
        if key not in metadata:
            raise _error("__init__", f"{path} has no {key!r}: not a vault")
    version = metadata["version"]
    if isinstance(version, bool) or not isinstance(version, (int, float)):
        raise _error("__init__", f"{path} has 'version' {version!r}; expected a number")
    if version // 1 != _VERSION // 1:
        raise _error(
            "__init__",
            f"{path} is a version {version} vault; this reads version {int(_VERSION)}.x",
        )
    return metadata


def _saved_leaves(path: str, metadata: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each leaf's datastore name, buffer shape and dtype, as `metadata.json` (at `path`)
    describes them, every one checked, so that a damaged file is named here rather than
    failing later inside `literal_eval` or TensorStore."""
    shapes, dtypes = _leaves(metadata["structure_shape"]), _leaves(metadata["structure_dtype"])
    for key, leaves in (("structure_shape", shapes), ("structure_dtype", dtypes)):
        for p, leaf in leaves:
            if not isinstance(leaf, str):
                raise _error(
                    "__init__",
                    f"{path}: {key!r} has {leaf!r} for leaf {_datastore_name(p)[:-1]!r}; "
                    "expected a string",
                )
    shape_names = [_datastore_name(p) for p, _ in shapes]
    dtype_names = [_datastore_name(p) for p, _ in dtypes]
    if shape_names != dtype_names:
        raise _error(
            "__init__",
            f"{path}: 'structure_shape' has leaves {shape_names} and 'structure_dtype' has "
            f"{dtype_names}; expected the same leaves",
        )
    saved = {
        name: (_parse_shape(path, name, shape), _parse_dtype(path, name, dtype))
        for name, (_, shape), (_, dtype) in zip(shape_names, shapes, dtypes)
    }
    if not saved:
        raise _error("__init__", f"{path} describes no leaves")
    return saved


def _parse_shape(path: str, name: str, text: str) -> tuple[int, ...]:
    try:
        shape = literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        shape = None
    if (
        not isinstance(shape, tuple)
        or len(shape) < 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise _error(
            "__init__",
            f"{path}: leaf {name[:-1]} has shape {text!r}; expected a tuple of at least two "
            "ints >= 0, such as '(4, 100, 3)'",
        )
    return shape


def _parse_dtype(path: str, name: str, text: str) -> str:
    try:
        jnp.dtype(text)
    except (TypeError, ValueError):
        raise _error(
            "__init__", f"{path}: leaf {name[:-1]} has dtype {text!r}; expected a dtype name"
        ) from None
    return text


def _but_time(shape: Any) -> list[int]:
    """A vault array's shape without its time axis (axis 1), which grows with writes."""
    return [n for i, n in enumerate(shape) if i != 1]


def _missing_dirs(path: str) -> list[str]:
    """The directories that making `path` would create, deepest first."""
    missing = []
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _build(
    directory: str,
    metadata: dict[str, Any],
    leaves: list[Any],
    names: list[str],
    compression: Any,
) -> None:
    """Writes a new vault's files into `directory`: `metadata.json`, an empty zarr array
    per leaf (chunked along time to suit appends) and a `vault_index` of 0."""
    with open(os.path.join(directory, _METADATA), "w") as f:
        json.dump(metadata, f)
    context = ts.Context()
    for name, leaf in zip(names, leaves):
        shape, dtype = tuple(leaf.shape), jnp.dtype(leaf.dtype)
        step_bytes = dtype.itemsize * math.prod(shape[2:]) * shape[0]
        steps = 2 ** int(math.log2(max(1, _CHUNK_BYTES // max(1, step_bytes))))
        spec = _spec(directory, name)
        spec["metadata"] = {
            "compressor": _COMPRESSION if compression is None else compression,
            "chunks": [shape[0], steps, *shape[2:]],
        }
        ts.open(
            spec,
            context=context,
            shape=(shape[0], _TIME_LIMIT, *shape[2:]),
            dtype=dtype.name,
            create=True,
        ).result()
    index = ts.open(
        _spec(directory, _INDEX), context=context, dtype=ts.int32, shape=(1,), create=True
    ).result()
    index.write(np.zeros(1, np.int32)).result()


def _discard(building: str | None, made: list[str]) -> None:
    """Removes what a failed creation made: its directory, and the parents it created
    (deepest first, each only if empty: another writer may have begun using one)."""
    if building is not None:
        shutil.rmtree(building, ignore_errors=True)
    for directory in made:
        if not os.path.isdir(directory):
            continue  # never made: the creation failed before it
        try:
            os.rmdir(directory)
        except OSError:
            return


def _weak(leaves: list[Any]) -> list[weakref.ref] | None:
    """Weak references to a state's leaves when all are JAX arrays: immutable, so the
    same objects later are the same data, and a weak reference keeps no buffer alive.
    (NumPy leaves can change in place: no such proof.)"""
    if not all(isinstance(leaf, jax.Array) for leaf in leaves):
        return None
    try:
        return [weakref.ref(leaf) for leaf in leaves]
    except TypeError:
        return None


class _Lost(ValueError):
    """Steps were overwritten in the buffer before `Vault.write` could write them."""


class Vault:
    """A dataset of experience on disk, written from a buffer's state as it fills.

    **Arguments** (Flashbax's):

    - `vault_name`, `rel_dir`, `vault_uid`: the vault is the directory
      `<cwd>/<rel_dir>/<vault_name>/<vault_uid>`; `vault_uid` defaults to the current time
      (`%Y%m%d%H%M%S`). `rel_dir` may be relative to the current directory or absolute;
      `vault_name` must lead to a directory inside it and `vault_uid` to one inside that
      (a `..` that leaves it, or an absolute path, is refused). Names are used as they are:
      `%41` is three characters, not `A`.
    - `experience_structure`: a buffer state's `experience` (leaves `(rows, time, ...)`);
      needed to create a vault, optional to open one (then `read` gives nested dicts).
    - `compression`: the zarr compressor for new vaults (default gzip, level 5); an
      existing vault keeps its own.
    - `metadata`: extra JSON-able data stored in `metadata.json` (others become strings);
      its keys may not be those the vault writes (`version`, `structure_shape`,
      `structure_dtype`).

    **Raises:** `ValueError` for a path that leaves `rel_dir`, reserved `metadata` keys,
    an experience that is not a buffer state's, a `metadata.json` that is missing or
    malformed (naming the file and what is wrong), or a creation that failed (which leaves
    no directory behind). Nothing is written before the arguments are checked.

    Write from one process at a time.
    """

    def __init__(
        self,
        vault_name: str,
        experience_structure: PyTree | None = None,
        rel_dir: str | os.PathLike[str] = "vaults",
        vault_uid: str | None = None,
        compression: dict | None = None,
        metadata: dict | None = None,
    ) -> None:
        uid = vault_uid if vault_uid else datetime.now().strftime("%Y%m%d%H%M%S")
        self._base_path = _vault_path(rel_dir, vault_name, uid)
        extra = _extra_metadata(metadata)
        metadata_path = os.path.join(self._base_path, _METADATA)
        self._context = ts.Context()
        if not os.path.exists(self._base_path):
            if experience_structure is None:
                raise _error(
                    "__init__",
                    f"there is no vault at {self._base_path}, and no `experience_structure` "
                    "was given to create one",
                )
            self._create(experience_structure, extra, compression)
        self._metadata = _read_metadata(metadata_path)
        saved = _saved_leaves(metadata_path, self._metadata)
        if experience_structure is None:
            self._structure = jtu.tree_structure(
                self._metadata["structure_shape"], is_leaf=lambda x: isinstance(x, str)
            )
            self._names = list(saved)
        else:
            self._structure = jtu.tree_structure(experience_structure)
            self._check_structure("__init__", experience_structure, saved)
            self._names = [
                _datastore_name(p) for p, _ in jtu.tree_flatten_with_path(experience_structure)[0]
            ]
        self._shapes = [saved[name][0] for name in self._names]
        self._dtypes = [saved[name][1] for name in self._names]
        self._stores = [self._open(name, saved[name]) for name in self._names]
        self._index_store = self._open(_INDEX, ((1,), "int32"))
        self.vault_index: int = int(self._index_store.read().result()[0])
        """How many steps of every row the vault holds (the next `write` appends there)."""
        # What the last `write` saw of the buffer: its write head, whether it was full, and
        # weak references to its leaves (the same arrays are proof that nothing was added).
        self._last_index = 0
        self._last_full: bool | None = False
        self._last_leaves: list[weakref.ref] | None = None

    # -- creating and opening ---------------------------------------------------------------

    def _open(self, name: str, saved: tuple[tuple[int, ...], str]) -> Any:
        """The vault's array `name`, checked against what `metadata.json` says of it (all
        but the time axis, which the arrays have of their own)."""
        try:
            store = ts.open(_spec(self._base_path, name), context=self._context).result()
        except ValueError as error:
            raise _error(
                "__init__", f"the vault at {self._base_path} has no array {name!r} ({error})"
            ) from None
        shape, dtype = saved
        if (
            store.rank != len(shape)
            or _but_time(store.shape) != _but_time(shape)
            or store.dtype.numpy_dtype != jnp.dtype(dtype)
        ):
            raise _error(
                "__init__",
                f"the vault at {self._base_path} has array {name!r} of "
                f"{store.dtype.name}{list(store.shape)}; {_METADATA} says {dtype}{list(shape)}",
            )
        return store

    def _create(self, experience: PyTree, extra: dict[str, Any], compression: Any) -> None:
        """Makes the vault in a directory of its own and renames it into place, so that a
        vault exists only once it is whole; if anything fails, removes what it made."""
        leaves = jtu.tree_flatten_with_path(experience)[0]
        if not leaves or any(len(getattr(x, "shape", ())) < 2 for _, x in leaves):
            raise _error(
                "__init__",
                "`experience_structure` must be a buffer state's experience: leaves "
                "`(rows, time, ...)`; got leaf shapes "
                f"{[tuple(getattr(x, 'shape', ())) for _, x in leaves]}",
            )
        names = [_datastore_name(p) for p, _ in leaves]
        if len(set(names)) != len(names):
            raise _error("__init__", f"two leaves would share a datastore: {names}")
        metadata = {
            "version": _VERSION,
            "structure_shape": _serialise(experience, lambda x: str(tuple(x.shape))),
            "structure_dtype": _serialise(experience, lambda x: jnp.dtype(x.dtype).name),
            **extra,
        }
        parent = os.path.dirname(self._base_path)
        made = _missing_dirs(parent)
        building, done = None, False
        try:
            os.makedirs(parent, exist_ok=True)
            building = tempfile.mkdtemp(
                prefix=os.path.basename(self._base_path) + ".creating-", dir=parent
            )
            _build(building, metadata, [x for _, x in leaves], names, compression)
            os.rename(building, self._base_path)
            done = True
        except Exception as error:
            raise _error(
                "__init__", f"could not create the vault at {self._base_path} ({error})"
            ) from error
        finally:
            if not done:
                _discard(building, made)

    def _check_structure(
        self, where: str, experience: PyTree, saved: dict[str, tuple[tuple[int, ...], str]]
    ) -> None:
        own = {
            _datastore_name(p): (tuple(x.shape), jnp.dtype(x.dtype).name)
            for p, x in jtu.tree_flatten_with_path(experience)[0]
        }
        if set(saved) != set(own):
            raise _error(
                where,
                f"the experience has leaves {sorted(own)}; the vault stores {sorted(saved)}",
            )
        for name in sorted(own):
            (shape, dtype), (saved_shape, saved_dtype) = own[name], saved[name]
            if (shape[0], *shape[2:]) != (saved_shape[0], *saved_shape[2:]) or dtype != saved_dtype:
                raise _error(
                    where,
                    f"leaf {name[:-1]} is {dtype}{list(shape)}; the vault stores "
                    f"{_stored(saved_shape, saved_dtype)}",
                )

    # -- writing ----------------------------------------------------------------------------

    def _state_fields(self, where: str, state: Any) -> tuple[list[Any], int, bool | None]:
        """The state's leaves, write head, and whether its ring has wrapped: `None` for a
        trajectory queue, whose `is_full` means that every step is unread, so that its state
        cannot show whether the ring wrapped."""
        leaves = self._experience(where, state)
        if isinstance(state, AbstractState):
            full = None if isinstance(state, TrajectoryQueueState) else bool(state.is_full)
            return leaves, int(state._write_head), full
        return leaves, int(state.current_index), bool(state.is_full)

    def _experience(self, where: str, state: Any) -> list[Any]:
        """The leaves of a state's experience, checked against the vault's. A state is one
        of ours, or Flashbax's (a trajectory buffer's), read by its field names."""
        if isinstance(state, AbstractTrajectoryState) and state._frame_stack is not None:
            raise _error(
                where,
                "the state is a frame-stacked buffer's (`frame_stack`), which stores each "
                "stack's newest frame and the episode starts; a vault stores whole steps in "
                "Flashbax's format, so it cannot hold it. Save it with `eqx_replay.save_state`",
            )
        if isinstance(state, AbstractState):
            experience = state.experience
        elif all(hasattr(state, name) for name in ("experience", "current_index", "is_full")):
            experience = state.experience
        else:
            raise _error(
                where,
                "expected a buffer state (with `experience`, `current_index` and `is_full`); "
                f"got {type(state).__name__}",
            )
        if jtu.tree_structure(experience) != self._structure:
            raise _error(
                where,
                f"the state's experience has structure {jtu.tree_structure(experience)}; the "
                f"vault was opened with {self._structure}",
            )
        leaves = jtu.tree_leaves(experience)
        for leaf, name, shape, dtype in zip(leaves, self._names, self._shapes, self._dtypes):
            got = (leaf.shape[0], *leaf.shape[2:])
            if got != (shape[0], *shape[2:]) or jnp.dtype(leaf.dtype).name != dtype:
                raise _error(
                    where,
                    f"state leaf {name[:-1]} is {jnp.dtype(leaf.dtype).name}{list(leaf.shape)}; "
                    f"the vault stores {_stored(shape, dtype)}",
                )
        return leaves

    def _host(self, leaf: Any, start: int, stop: int) -> np.ndarray:
        if isinstance(leaf, np.ndarray):
            return leaf[:, start:stop]
        if all(d.platform == "cpu" for d in leaf.devices()):
            return np.asarray(leaf)[:, start:stop]
        return np.asarray(jax.device_get(leaf[:, start:stop]))

    def _check_continues(self, index: int, full: bool) -> None:
        before, was_full = self._last_index, self._last_full
        if not full and (was_full or index < before):
            raise _error(
                "write",
                f"the state holds fewer steps than at the last write (write head {index}, "
                f"full: {full}; last write saw {before}, full: {was_full}): it is not the same "
                "buffer's later state. Open the vault again to write another buffer's steps",
            )

    def _least_added(self, capacity: int, index: int, full: bool | None) -> int:
        """The fewest steps (per row) that take the buffer from what the last write saw to
        write head `index` and fullness `full`: how far the head moved, plus one capacity
        if the buffer filled up without its head passing the last write's. Any further
        whole wraps leave no trace in a state. (A queue's, `full is None`: how far the
        head moved.)"""
        moved = (index - self._last_index) % capacity
        if full is None:
            return moved
        self._check_continues(index, full)
        filled = full and not self._last_full
        return moved + capacity if filled and index >= self._last_index else moved

    def _lost(self, lost: int, capacity: int) -> "_Lost":
        return _Lost(
            f"`Vault.write`: at least {lost} steps of every row (vault steps "
            f"{self.vault_index} to {self.vault_index + lost - 1} or more) were overwritten in "
            f"the buffer before they were written: the buffer, of capacity {capacity}, moved "
            "by more than its capacity since the last write. Write at least once every "
            f"{capacity} steps; `write(state, skip_lost=True)` writes the {capacity} steps it "
            "still holds"
        )

    def _steps_counted(self, capacity: int, index: int, full: bool | None, added: int) -> int:
        """The steps to write when the caller counted `added` since the last write."""
        if isinstance(added, bool) or not isinstance(added, (int, np.integer)) or added < 0:
            raise _error("write", f"`added` must be an int >= 0; got {added!r}")
        added = int(added)
        least = self._least_added(capacity, index, full)
        if added < least or (added - least) % capacity or (full is False and added != least):
            exactly = ", and it is not full, so exactly that" if full is False else ""
            raise _error(
                "write",
                f"`added` ({added}) does not match the buffer's write head, which shows "
                f"{least} steps added since the last write (plus any whole multiple of its "
                f"capacity, {capacity}{exactly})",
            )
        if added > capacity:
            raise self._lost(added - capacity, capacity)
        return added

    def _steps_since_last_write(self, leaves: list[Any], index: int, full: bool | None) -> int:
        """The steps to write, from the write head and fullness alone: never from the data,
        whose equal bytes do not mean that nothing was added."""
        capacity = leaves[0].shape[1]
        least = self._least_added(capacity, index, full)
        if least > capacity:
            raise self._lost(least - capacity, capacity)
        if least == 0 and full is not False and not self._same_leaves(leaves):
            what = "the buffer is full" if full else "the state is a trajectory queue's"
            raise _error(
                "write",
                f"{what} and its write head ({index}) is where it was at the last "
                "write: the state cannot show whether 0 steps or a whole multiple of its "
                f"capacity ({capacity}) were added since. Pass the steps added since the last "
                "write, `write(state, added=n)` (`added=0` if none)",
            )
        return least

    def _same_leaves(self, leaves: list[Any]) -> bool:
        """Whether `leaves` are the very arrays that the last write saw (alive): immutable
        JAX arrays, so nothing was added to them since."""
        refs = self._last_leaves
        return refs is not None and all(ref() is leaf for ref, leaf in zip(refs, leaves))

    def write(
        self,
        fbx_state: Any,
        source_interval: tuple[int, int] = (0, 0),
        dest_start: int | None = None,
        *,
        skip_lost: bool = False,
        added: int | None = None,
    ) -> int:
        """Appends the steps added to the buffer since the last write (or since the vault was
        opened), in one atomic transaction with the new `vault_index`.

        **Arguments:**

        - `fbx_state`: a buffer state with `experience` (leaves `(rows, time, ...)`),
          `current_index` and `is_full` (any eqx_replay trajectory, flat or item state, or
          Flashbax's), or a trajectory queue's state (whose `is_full` says that every step
          is unread, not that its ring wrapped: its steps are counted by how far its write
          head moved, and a head that did not move needs `added`).
        - `source_interval`: `(start, stop)` time indices of the buffer to write instead
          (wrapping when `stop < start`), as in Flashbax; `(0, 0)` means "what is new".
        - `dest_start`: where to write in the vault (default: at its end, `vault_index`).
        - `skip_lost`: if the buffer overwrote steps before they were written, write the
          steps it still holds instead of raising.
        - `added`: optionally, how many steps (per row) were added to the buffer since the
          last write (or since the vault was opened), counted by the caller. The state alone
          cannot show how many times the buffer went round (Flashbax's state has no step
          counter); with `added`, every loss is found, however many wraps.

        Without `added`, the steps to write come from the state's write head and `is_full`
        alone, never from the data: how far the head moved since the last write (a whole
        capacity when the buffer filled up with its head back where it was). Whole extra
        wraps are invisible then: write at least once every `capacity` steps, or pass
        `added`. A full buffer whose head did not move is ambiguous (nothing added, or a
        whole multiple of the capacity): unless its experience is the very arrays the last
        write saw (the same state again, not a copy), `write` raises and asks for `added`
        (`added=0` if nothing was added).

        **Returns:** how many steps (per row) were written.

        **Raises:** `ValueError` if the state's structure differs from the vault's, if it
        holds fewer steps than at the last write, if steps were lost (see `skip_lost`), if
        a full buffer's head did not move and `added` is not given (see above), or if
        `added` disagrees with how far the write head moved. A refused write writes
        nothing.
        """
        leaves, index, full = self._state_fields("write", fbx_state)
        capacity = leaves[0].shape[1]
        if source_interval != (0, 0):
            start, stop = (int(v) for v in source_interval)
            if not (0 <= start <= capacity and 0 <= stop <= capacity):
                raise _error(
                    "write",
                    f"`source_interval` {source_interval} is outside the buffer's time axis "
                    f"[0, {capacity}]",
                )
            steps = (stop - start) % capacity if stop != start else 0
        else:
            try:
                if added is None:
                    steps = self._steps_since_last_write(leaves, index, full)
                else:
                    steps = self._steps_counted(capacity, index, full, added)
            except _Lost:
                if not skip_lost:
                    raise
                steps = capacity
            start, stop = (index - steps) % capacity, index
        dest = self.vault_index if dest_start is None else int(dest_start)
        if dest < 0:
            raise _error("write", f"`dest_start` must be >= 0; got {dest}")
        if steps:
            pieces = [(start, min(start + steps, capacity))]
            if start + steps > capacity:
                pieces.append((0, start + steps - capacity))
            self._commit(leaves, pieces, dest, max(self.vault_index, dest + steps))
        self.vault_index = max(self.vault_index, dest + steps)
        self._last_index, self._last_full = index, full
        self._last_leaves = _weak(leaves)
        return steps

    def _commit(
        self, leaves: list[Any], pieces: list[tuple[int, int]], dest: int, vault_index: int
    ) -> None:
        transaction = ts.Transaction(atomic=True)
        futures = []
        for leaf, store in zip(leaves, self._stores):
            at = dest
            for start, stop in pieces:
                target = store.with_transaction(transaction)[:, at : at + stop - start]
                futures.append(target.write(self._host(leaf, start, stop)))
                at += stop - start
        futures.append(
            self._index_store.with_transaction(transaction).write(np.array([vault_index], np.int32))
        )
        for future in futures:
            future.result()
        transaction.commit_async().result()

    # -- reading ----------------------------------------------------------------------------

    def _interval(self, where: str, start: int, stop: int) -> tuple[int, int]:
        if not (0 <= start <= stop <= self.vault_index):
            raise _error(
                where,
                f"steps [{start}, {stop}) are not within the vault's [0, {self.vault_index})",
            )
        return start, stop

    def read_range(self, start: int, stop: int) -> PyTree:
        """The vault's steps `start` to `stop - 1` of every row: the experience structure
        with leaves `(rows, stop - start, ...)`, read in parallel."""
        start, stop = self._interval("read_range", int(start), int(stop))
        return jtu.tree_unflatten(self._structure, _arrays(self._read(start, stop)))

    def read(
        self, timesteps: int | None = None, percentiles: tuple[int, int] | None = None
    ) -> TrajectoryBufferState:
        """Flashbax's `read`: everything (default), the last `timesteps` steps, or the
        steps between two `percentiles` of the vault, as a full `TrajectoryBufferState`
        whose time axis is the steps read (`current_index` 0, `is_full` True)."""
        if timesteps is not None:
            if not 0 <= int(timesteps) <= self.vault_index:
                raise _error(
                    "read", f"`timesteps` must be in [0, {self.vault_index}]; got {timesteps}"
                )
            start, stop = self.vault_index - int(timesteps), self.vault_index
        elif percentiles is not None:
            low, high = percentiles
            if not 0 <= low < high <= 100:
                raise _error(
                    "read", f"`percentiles` must be ascending within [0, 100]; got {percentiles}"
                )
            start = int(self.vault_index * (low / 100))
            stop = int(self.vault_index * (high / 100))
        else:
            start, stop = 0, self.vault_index
        return TrajectoryBufferState(
            experience=self.read_range(start, stop),
            current_index=jnp.array(0, dtype=int),
            is_full=jnp.array(True),
        )

    def chunks(self, steps: int, start: int = 0, stop: int | None = None) -> Iterator[PyTree]:
        """The vault's steps from `start` to `stop` (default: the end) in pieces of `steps`
        (the last may be shorter), each leaves `(rows, steps, ...)`: stream a dataset larger
        than memory, e.g. `for batch in vault.chunks(1000): state = buffer.add(state,
        batch)` with a trajectory buffer of `add_batch_size = rows`. The next piece is read
        while the current one is used."""
        if int(steps) < 1:
            raise _error("chunks", f"`steps` must be >= 1; got {steps}")
        start, stop = self._interval(
            "chunks", int(start), self.vault_index if stop is None else int(stop)
        )
        bounds = [(a, min(a + int(steps), stop)) for a in range(start, stop, int(steps))]
        pending = self._read(*bounds[0]) if bounds else []
        for i in range(len(bounds)):
            current = pending
            if i + 1 < len(bounds):
                pending = self._read(*bounds[i + 1])
            yield jtu.tree_unflatten(self._structure, _arrays(current))

    def _read(self, start: int, stop: int) -> list[tuple[np.ndarray, Any]]:
        """Starts reading steps `[start, stop)` of every leaf, each into an array of its own
        whose memory JAX can adopt without a copy (aligned, as JAX's CPU client needs)."""
        reads = []
        for store in self._stores:
            view = store[:, start:stop]
            target = _aligned(tuple(view.shape), view.dtype.numpy_dtype)
            reads.append((target, ts.array(target).write(view)))
        return reads

    def to_state(self, buffer: Any, example: PyTree) -> Any:
        """A state of `buffer` holding the vault's last `capacity` steps where a buffer that
        had every step of the vault added would hold them: the write head at
        `vault_index % capacity`, full once the vault has `capacity` steps. For a vault
        written from a buffer's first step on, this is that buffer's state exactly.

        `buffer` is a trajectory buffer (not prioritised, not `boundary="strict"`) or a
        flat or item buffer whose rows are the vault's; `example` is one step, as for
        `init`. Use `save_state`/`load_state` for exact checkpoints of other kinds."""
        state = jax.eval_shape(buffer.init, example)
        if type(state) is not TrajectoryBufferState:
            raise _error(
                "to_state",
                f"a {type(buffer).__name__}'s state is a {type(state).__name__}; a vault holds "
                "only experience, so it restores trajectory, flat and item buffers' states. "
                "Use eqx_replay.save_state/load_state for exact checkpoints of any kind",
            )
        self._experience("to_state", state)
        capacity = jtu.tree_leaves(state.experience)[0].shape[1]
        held = min(capacity, self.vault_index)
        first = self.vault_index - held
        slots = (np.arange(first, self.vault_index) % capacity) if held else np.arange(0)
        arrays = []
        for store, empty in zip(self._stores, jtu.tree_leaves(state.experience)):
            data = np.zeros(empty.shape, empty.dtype)
            data[:, slots] = store[:, first : self.vault_index].read().result()
            arrays.append(data)
        experience = jtu.tree_unflatten(jtu.tree_structure(state.experience), arrays)
        done = TrajectoryBufferState(
            experience=jax.device_put(experience),
            current_index=jnp.asarray(self.vault_index % capacity, state.current_index.dtype),
            is_full=jnp.asarray(self.vault_index >= capacity),
        )
        buffer._check_state("Vault.to_state", done)
        return done
