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

from ._trajectory import TrajectoryBufferState


__all__ = ["Vault"]

_METADATA = "metadata.json"
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


class _Lost(ValueError):
    """Steps were overwritten in the buffer before `Vault.write` could write them."""


class Vault:
    """A dataset of experience on disk, written from a buffer's state as it fills.

    **Arguments** (Flashbax's):

    - `vault_name`, `rel_dir`, `vault_uid`: the vault is the directory
      `<cwd>/<rel_dir>/<vault_name>/<vault_uid>`; `vault_uid` defaults to the current time
      (`%Y%m%d%H%M%S`).
    - `experience_structure`: a buffer state's `experience` (leaves `(rows, time, ...)`);
      needed to create a vault, optional to open one (then `read` gives nested dicts).
    - `compression`: the zarr compressor for new vaults (default gzip, level 5); an
      existing vault keeps its own.
    - `metadata`: extra JSON-able data stored in `metadata.json` (others become strings).

    Write from one process at a time.
    """

    def __init__(
        self,
        vault_name: str,
        experience_structure: PyTree | None = None,
        rel_dir: str = "vaults",
        vault_uid: str | None = None,
        compression: dict | None = None,
        metadata: dict | None = None,
    ) -> None:
        uid = vault_uid if vault_uid else datetime.now().strftime("%Y%m%d%H%M%S")
        self._base_path = os.path.normpath(os.path.join(os.getcwd(), rel_dir, vault_name, uid))
        metadata_path = os.path.join(self._base_path, _METADATA)
        self._context = ts.Context()
        if not os.path.exists(self._base_path):
            if experience_structure is None:
                raise _error(
                    "__init__",
                    f"there is no vault at {self._base_path}, and no `experience_structure` "
                    "was given to create one",
                )
            self._create(experience_structure, metadata, compression)
        self._metadata = self._load_metadata(metadata_path)
        shapes, dtypes = self._metadata["structure_shape"], self._metadata["structure_dtype"]
        saved = {
            _datastore_name(p): (literal_eval(s), d)
            for (p, s), (_, d) in zip(_leaves(shapes), _leaves(dtypes))
        }
        if not saved:
            raise _error("__init__", f"{metadata_path} describes no leaves")
        if experience_structure is None:
            self._structure = jtu.tree_structure(shapes, is_leaf=lambda x: isinstance(x, str))
            self._names = list(saved)
        else:
            self._structure = jtu.tree_structure(experience_structure)
            self._check_structure("__init__", experience_structure, saved)
            self._names = [
                _datastore_name(p) for p, _ in jtu.tree_flatten_with_path(experience_structure)[0]
            ]
        self._shapes = [saved[name][0] for name in self._names]
        self._dtypes = [saved[name][1] for name in self._names]
        self._rows = self._shapes[0][0]
        self._stores = [
            ts.open(self._spec(self._base_path, name), context=self._context).result()
            for name in self._names
        ]
        self._index_store = ts.open(
            self._spec(self._base_path, _INDEX), context=self._context
        ).result()
        self.vault_index: int = int(self._index_store.read().result()[0])
        """How many steps of every row the vault holds (the next `write` appends there)."""
        # What the last `write` saw of the buffer: its write head, whether it was full, and
        # the step just before the head (to tell a buffer that moved by a whole capacity
        # from one that did not move).
        self._last_index = 0
        self._last_full = False
        self._last_step: list[np.ndarray] | None = None

    # -- creating and opening ---------------------------------------------------------------

    def _spec(self, base: str, name: str) -> dict[str, Any]:
        return {
            "driver": "zarr",
            "kvstore": {"driver": "ocdbt", "base": f"file://{base}", "path": name},
        }

    def _load_metadata(self, path: str) -> dict[str, Any]:
        try:
            with open(path) as f:
                metadata = json.load(f)
        except (OSError, ValueError) as error:
            raise _error("__init__", f"{path} is missing or not JSON ({error})") from None
        for key in ("version", "structure_shape", "structure_dtype"):
            if key not in metadata:
                raise _error("__init__", f"{path} has no {key!r}: not a vault")
        if metadata["version"] // 1 != _VERSION // 1:
            raise _error(
                "__init__",
                f"{path} is a version {metadata['version']} vault; this reads version "
                f"{int(_VERSION)}.x",
            )
        return metadata

    def _create(self, experience: PyTree, extra: dict | None, compression: dict | None) -> None:
        """Makes the vault in a directory of its own and renames it into place, so that a
        vault exists only once it is whole."""
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
            **jtu.tree_map(
                lambda x: x if isinstance(x, (bool, str, int, float, type(None))) else str(x),
                extra or {},
            ),
        }
        os.makedirs(os.path.dirname(self._base_path), exist_ok=True)
        building = tempfile.mkdtemp(
            prefix=os.path.basename(self._base_path) + ".creating-",
            dir=os.path.dirname(self._base_path),
        )
        with open(os.path.join(building, _METADATA), "w") as f:
            json.dump(metadata, f)
        context = ts.Context()
        for name, (_, leaf) in zip(names, leaves):
            shape, dtype = tuple(leaf.shape), jnp.dtype(leaf.dtype)
            step_bytes = dtype.itemsize * math.prod(shape[2:]) * shape[0]
            steps = 2 ** int(math.log2(max(1, _CHUNK_BYTES // max(1, step_bytes))))
            spec = self._spec(building, name)
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
            self._spec(building, _INDEX), context=context, dtype=ts.int32, shape=(1,), create=True
        ).result()
        index.write(np.zeros(1, np.int32)).result()
        del index, context
        try:
            os.rename(building, self._base_path)
        except OSError as error:
            shutil.rmtree(building, ignore_errors=True)
            raise _error(
                "__init__", f"could not create the vault at {self._base_path} ({error})"
            ) from None

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

    def _state_fields(self, where: str, state: Any) -> tuple[list[Any], int, bool]:
        leaves = self._experience(where, state)
        index = state.current_index if hasattr(state, "current_index") else state.write_index
        return leaves, int(index), bool(state.is_full)

    def _experience(self, where: str, state: Any) -> list[Any]:
        """The leaves of a state's experience, checked against the vault's."""
        experience = getattr(state, "experience", None)
        index = getattr(state, "current_index", getattr(state, "write_index", None))
        full = getattr(state, "is_full", None)
        if experience is None or index is None or full is None:
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

    def _lost(self, lost: int, capacity: int) -> "_Lost":
        return _Lost(
            f"`Vault.write`: at least {lost} steps of every row (vault steps "
            f"{self.vault_index} to {self.vault_index + lost - 1} or more) were overwritten in "
            f"the buffer before they were written: the buffer, of capacity {capacity}, moved "
            "by more than its capacity since the last write. Write at least once every "
            f"{capacity} steps; `write(state, skip_lost=True)` writes the {capacity} steps it "
            "still holds"
        )

    def _steps_counted(self, capacity: int, index: int, full: bool, added: int) -> int:
        """The steps to write when the caller counted `added` since the last write."""
        if isinstance(added, bool) or not isinstance(added, (int, np.integer)) or added < 0:
            raise _error("write", f"`added` must be an int >= 0; got {added!r}")
        self._check_continues(index, full)
        moved = (index - self._last_index) % capacity
        if int(added) % capacity != moved or (added > 0 and not full and index == 0):
            raise _error(
                "write",
                f"`added` ({added}) does not match the buffer's write head, which moved by "
                f"{moved} steps since the last write (modulo its capacity, {capacity})",
            )
        if added > capacity:
            raise self._lost(int(added) - capacity, capacity)
        return int(added)

    def _steps_since_last_write(self, leaves: list[Any], index: int, full: bool) -> int:
        capacity = leaves[0].shape[1]
        before, was_full = self._last_index, self._last_full
        self._check_continues(index, full)
        moved = (index - before) % capacity
        first_wrap = full and not was_full
        overwritten = self._last_step is not None and any(
            last.tobytes() != np.ascontiguousarray(self._host(leaf, p, p + 1)).tobytes()
            for leaf, last, p in zip(
                leaves, self._last_step, [(before - 1) % capacity] * len(leaves)
            )
        )
        if (first_wrap and index > before) or (overwritten and moved > 0):
            raise self._lost(moved, capacity)
        if moved == 0 and (first_wrap or overwritten):
            return capacity
        return moved

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
          Flashbax's), or a trajectory queue's state.
        - `source_interval`: `(start, stop)` time indices of the buffer to write instead
          (wrapping when `stop < start`), as in Flashbax; `(0, 0)` means "what is new".
        - `dest_start`: where to write in the vault (default: at its end, `vault_index`).
        - `skip_lost`: if the buffer overwrote steps before they were written, write the
          steps it still holds instead of raising.
        - `added`: optionally, how many steps (per row) were added to the buffer since the
          last write (or since the vault was opened), counted by the caller. The state alone
          cannot show how many times the buffer went round (Flashbax's state has no step
          counter); with `added`, every loss is found, however many wraps.

        **Returns:** how many steps (per row) were written.

        **Raises:** `ValueError` if the state's structure differs from the vault's, if it
        holds fewer steps than at the last write, or if steps were lost (see `skip_lost`).
        Without `added`, a buffer that moved by exactly a whole multiple of its capacity is
        written as one capacity's worth: write at least once every `capacity` steps, or pass
        `added`. With it, `added` must agree with how far the write head moved.
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
        self._last_step = [
            np.array(self._host(leaf, (index - 1) % capacity, (index - 1) % capacity + 1))
            for leaf in leaves
        ]
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
