"""Trace-time validation of what users pass to a buffer.

Every check runs while JAX traces a call, before anything is written, so a rejected call
costs nothing at run time and leaves the state untouched. Messages name the call, the leaf
path, what was expected and what came.
"""

import dataclasses
import functools as ft
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, PyTree

from ._data import AbstractState


def _path(path: tuple[Any, ...]) -> str:
    return jtu.keystr(path) if path else "<root>"


def shape_str(shape: tuple[int | str, ...]) -> str:
    """A shape as Python writes a tuple: `()`, `(3,)`, `(3, 4)`; names of axes print as
    themselves: `(6, t, 2)`."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def describe(x: Any) -> str:
    """`x` as an error message shows it: `float32[4, 8]`, or its type."""
    dtype, shape = getattr(x, "dtype", None), getattr(x, "shape", None)
    if dtype is None or shape is None:
        return type(x).__name__
    return f"{dtype}{list(shape)}"


def check_example(where: str, experience: PyTree) -> None:
    """An example step must be a non-empty pytree whose leaves are all arrays."""
    leaves = jtu.tree_flatten_with_path(experience)[0]
    if not leaves:
        raise ValueError(f"`{where}`: the example has no array leaves; got {experience!r}")
    for path, leaf in leaves:
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            raise TypeError(
                f"`{where}`: leaf {_path(path)} is a {type(leaf).__name__} ({leaf!r}); "
                "expected an array. Wrap Python numbers with `jnp.asarray` so the dtype "
                "and shape stored in the buffer are explicit."
            )
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise TypeError(
                f"`{where}`: leaf {_path(path)} is an array of PRNG keys "
                f"({leaf.dtype}{list(leaf.shape)}); a buffer stores numeric arrays: store "
                "`jax.random.key_data(key)` and rebuild the keys from a sample with "
                "`jax.random.wrap_key_data`"
            )
        if not (jnp.issubdtype(leaf.dtype, jnp.number) or leaf.dtype == jnp.bool_):
            raise TypeError(
                f"`{where}`: leaf {_path(path)} has dtype {leaf.dtype}; expected a numeric "
                "or boolean dtype"
            )


def _structure_error(where: str, expected: PyTree, got: PyTree) -> str:
    expected_paths = {_path(p) for p, _ in jtu.tree_flatten_with_path(expected)[0]}
    got_paths = {_path(p) for p, _ in jtu.tree_flatten_with_path(got)[0]}
    missing = sorted(expected_paths - got_paths)
    extra = sorted(got_paths - expected_paths)
    parts = []
    if missing:
        parts.append("is missing leaves " + ", ".join(missing))
    if extra:
        parts.append("has unexpected leaves " + ", ".join(extra))
    if not parts:
        parts.append(f"has structure {jtu.tree_structure(got)}")
    return (
        f"`{where}`: the batch "
        + " and ".join(parts)
        + f"; expected the structure of the example given to `init`: "
        f"{jtu.tree_structure(expected)}"
    )


class Axis(NamedTuple):
    """A leading axis of an added batch: a number of entries from `low` to `high`, called
    `name` in messages (a fixed size is named by its number)."""

    name: str
    low: int
    high: int


def check_leading(
    where: str, storage: PyTree[Array | jax.ShapeDtypeStruct], batch: PyTree, axes: tuple[Axis, ...]
) -> tuple[int, ...]:
    """Checks a batch against the storage it will be written into: each batch leaf must be
    `(*axes, *item)`, where the storage leaf is `(rows, capacity, *item)`, with the
    storage's dtype, and every leaf must agree on the size of each axis.

    **Returns:** the sizes of `axes`.
    """
    if jtu.tree_structure(batch) != jtu.tree_structure(storage):
        raise ValueError(_structure_error(where, storage, batch))
    ranges = [f"{axis.low} <= {axis.name} <= {axis.high}" for axis in axes if axis.low < axis.high]
    bounds = f" with {', '.join(ranges)}" if ranges else ""
    sizes_seen: tuple[str, tuple[int, ...]] | None = None
    for (path, store), leaf in zip(jtu.tree_flatten_with_path(storage)[0], jtu.tree_leaves(batch)):
        item = store.shape[2:]
        expected = shape_str(tuple(axis.name for axis in axes) + item)
        name = _path(path)
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(
                f"`{where}`: leaf {name} is a {type(leaf).__name__}; expected an array of "
                f"shape {expected}"
            )
        shape = tuple(leaf.shape)
        sizes = shape[: len(axes)]
        if (
            len(shape) != len(axes) + len(item)
            or shape[len(axes) :] != item
            or not all(axis.low <= size <= axis.high for axis, size in zip(axes, sizes))
        ):
            raise ValueError(
                f"`{where}`: leaf {name} has shape {shape_str(shape)}; expected {expected}{bounds}"
            )
        if leaf.dtype != store.dtype:
            raise TypeError(
                f"`{where}`: leaf {name} has dtype {leaf.dtype}; expected {store.dtype}, "
                "the dtype of the example given to `init`"
            )
        if sizes_seen is None:
            sizes_seen = (name, sizes)
        elif sizes != sizes_seen[1]:
            axis = next(a for a, x, y in zip(axes, sizes, sizes_seen[1]) if x != y)
            i = axes.index(axis)
            raise ValueError(
                f"`{where}`: leaves disagree on {axis.name}: {sizes_seen[0]} has "
                f"{sizes_seen[1][i]}, {name} has {sizes[i]}"
            )
    assert sizes_seen is not None
    return sizes_seen[1]


def check_batch(
    where: str, storage: PyTree[Array | jax.ShapeDtypeStruct], batch: PyTree, max_steps: int
) -> int:
    """Checks a batch of steps `(rows, t, ...)`, `1 <= t <= max_steps`, against the storage
    `(rows, capacity, ...)` it will be written into (see `check_leading`).

    **Returns:** `t`.
    """
    rows = jtu.tree_leaves(storage)[0].shape[0]
    _, steps = check_leading(
        where, storage, batch, (Axis(str(rows), rows, rows), Axis("t", 1, max_steps))
    )
    return steps


@ft.cache
def _raw_key_shape(impl: str) -> tuple[int, ...]:
    """The shape of a raw key (`jax.random.PRNGKey`) of the default implementation `impl`."""
    del impl  # the cache key: the shape is read from the configuration in force
    return tuple(jax.eval_shape(lambda: jr.PRNGKey(0)).shape)


def check_key(where: str, key: Any) -> None:
    """A key is a typed key of shape `()` (`jax.random.key`) or a raw key of the default
    implementation (`jax.random.PRNGKey`: `uint32[2]`, or `uint32[4]` under
    `jax_default_prng_impl="rbg"`)."""
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()))
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return
    impl = str(jax.config.jax_default_prng_impl)  # pyright: ignore[reportAttributeAccessIssue]
    raw_shape = _raw_key_shape(impl)
    if dtype == jnp.uint32 and shape == raw_shape:
        return
    got = describe(key)
    raise TypeError(
        f"`{where}`: `rng_key` must be a single PRNG key, from `jax.random.key(seed)` or "
        f"`jax.random.PRNGKey(seed)` (uint32{list(raw_shape)} with the default "
        f"implementation, {impl}); got {got}"
    )


def explicit_axes(x: Any) -> tuple[str, ...]:
    """The mesh axes that `x`'s type says it is split over (Explicit mesh axes only: JAX
    does not track Auto axes in types)."""
    try:
        spec = jax.typeof(x).sharding.spec
    except Exception:
        return ()
    axes: list[str] = []
    for entry in spec:
        if entry is not None:
            axes.extend([entry] if isinstance(entry, str) else list(entry))
    return tuple(axes)


def check_unsplit(where: str, what: str, tree: PyTree) -> None:
    """An unsharded buffer's arrays must not be split over mesh axes."""
    for path, leaf in jtu.tree_flatten_with_path(tree)[0]:
        axes = explicit_axes(leaf)
        if axes:
            raise ValueError(
                f"`{where}`: {what} leaf {_path(path)} is split over the mesh axes {axes}, "
                "but this buffer has no `sharding`: make the buffer with the `sharding` "
                "that placed it, or pass arrays that are not split (e.g. replicated)"
            )


def check_state(
    where: str,
    state: Any,
    state_type: type,
    storage_prefix: tuple[int, int],
    empty: Callable[[PyTree], Any],
    *,
    sharded: bool = False,
) -> None:
    """A state must be what this buffer's `init` makes: of exactly the buffer's state type,
    with storage leaves `(rows, capacity, ...)`, and every other field of the same tree
    structure, shape and dtype as `empty` (`init` without its checks) gives for the stored
    experience."""
    if type(state) is not state_type:
        hint = (
            ": was the state made by another buffer's `init`?"
            if isinstance(state, eqx.Module)
            else ""
        )
        raise TypeError(
            f"`{where}`: `state` must be a {state_type.__name__}, as this buffer's `init` "
            f"makes it; got {type(state).__name__}{hint}"
        )
    example = []
    for path, leaf in jtu.tree_flatten_with_path(state.experience)[0]:
        shape = tuple(getattr(leaf, "shape", ()))
        if shape[:2] != storage_prefix or not hasattr(leaf, "dtype"):
            raise ValueError(
                f"`{where}`: state leaf {_path(path)} has shape {shape}; this buffer stores "
                f"{storage_prefix + ('...',)}: was the state made by another buffer's `init`?"
            )
        example.append(jax.ShapeDtypeStruct(shape[2:], leaf.dtype))
    example = jtu.tree_unflatten(jtu.tree_structure(state.experience), example)
    if not sharded:
        check_unsplit(where, "the state's experience", state.experience)
    expected = jax.eval_shape(
        lambda: empty(jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), example))
    )
    for field in dataclasses.fields(state):
        got, want = getattr(state, field.name), getattr(expected, field.name)
        if field.metadata.get("static", False) and got != want:
            raise ValueError(
                f"`{where}`: state field .{field.name} is {got!r}; this buffer's `init` makes "
                f"{want!r}: was the state made by a buffer with another configuration?"
            )
    if jtu.tree_structure(state) != jtu.tree_structure(expected):
        raise ValueError(
            f"`{where}`: `state` has structure {jtu.tree_structure(state)}; this buffer's "
            f"`init` makes {jtu.tree_structure(expected)}: was the state made by another "
            "buffer's `init`?"
        )
    for (path, leaf), want in zip(jtu.tree_flatten_with_path(state)[0], jtu.tree_leaves(expected)):
        shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
        if shape is None or dtype is None:
            raise TypeError(
                f"`{where}`: state field {_path(path)} is a {type(leaf).__name__}; expected "
                f"an array {want.dtype}{list(want.shape)}"
            )
        if tuple(shape) != want.shape or dtype != want.dtype:
            raise (ValueError if tuple(shape) != want.shape else TypeError)(
                f"`{where}`: state field {_path(path)} is {dtype}{list(shape)}; expected "
                f"{want.dtype}{list(want.shape)}, as this buffer's `init` makes it: was the "
                "state made by another buffer's `init`, or changed by hand?"
            )


def check_priorities(where: str, indices: Any, priorities: Any) -> tuple[Array, Array]:
    """`indices` must be integers and `priorities` floats, both of shape `(k,)`.

    **Returns:** both as arrays, `priorities` as float32.
    """
    for name, value, kind in (("indices", indices, "integer"), ("priorities", priorities, "float")):
        dtype = getattr(value, "dtype", None)
        shape = tuple(getattr(value, "shape", ()))
        ok_dtype = dtype is not None and (
            jnp.issubdtype(dtype, jnp.integer)
            if kind == "integer"
            else jnp.issubdtype(dtype, jnp.floating)
        )
        if not ok_dtype or len(shape) != 1:
            raise TypeError(
                f"`{where}`: `{name}` must be a 1-d {kind} array; got {describe(value)}"
            )
    if indices.shape != priorities.shape:
        raise ValueError(
            f"`{where}`: `priorities` has shape {tuple(priorities.shape)} but `indices` has "
            f"shape {tuple(indices.shape)}; expected one priority per index"
        )
    return jnp.asarray(indices, jnp.int32), jnp.asarray(priorities, jnp.float32)


def check_beta(where: str, beta: Any) -> None:
    """`beta` must be a number in `[0, 1]`; a traced `beta` cannot be checked and passes."""
    if isinstance(beta, Tracer):
        return
    dtype = getattr(beta, "dtype", None)
    is_number = isinstance(beta, (int, float, np.integer, np.floating)) and not isinstance(
        beta, (bool, np.bool_)
    )
    is_scalar_array = (
        dtype is not None
        and tuple(getattr(beta, "shape", ())) == ()
        and (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
    )
    if not (is_number or is_scalar_array):
        got = describe(beta) if dtype is not None else f"{type(beta).__name__} {beta!r}"
        raise TypeError(f"`{where}`: `beta` must be a number in [0, 1]; got {got}")
    value = float(beta)
    if not 0 <= value <= 1:
        raise ValueError(f"`{where}`: `beta` must be in [0, 1]; got {value}")


def per_buffer(
    where: str,
    state: Any,
    check: Callable[[str, Any], None],
    query: Callable[[Any], Array],
) -> Array:
    """A read-only query (`can_sample`, `can_add`) of a state that may carry batch axes in
    front of every field, as the states that `jax.pmap(buffer.add)` returns do: checked
    as one buffer's state, answered once per buffer (as Flashbax's elementwise queries
    are). `add` and `sample` keep their strict checks.

    **Arguments:**

    - `where`: the call, for errors.
    - `state`: the state, with or without batch axes in front of every field.
    - `check`: the buffer's state check, `check(where, state)`, applied to one buffer's
      part (as shapes).
    - `query`: the query of one buffer's state.

    **Returns:** the answers, shaped as the batch axes (a scalar for one buffer's state).
    """
    axes = jnp.ndim(state.is_full) if isinstance(state, AbstractState) else 0
    if not axes:
        check(where, state)
        return query(state)
    leaves = jtu.tree_flatten_with_path(state)[0]
    batch = tuple(jnp.shape(state.is_full))
    for path, leaf in leaves:
        if tuple(jnp.shape(leaf))[:axes] != batch:
            raise ValueError(
                f"`{where}`: state leaf {_path(path)} has shape {shape_str(jnp.shape(leaf))}; "
                f"expected batch axes {shape_str(batch)} in front of every field, as "
                f"`is_full` has"
            )
    check(
        where,
        jtu.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x)[axes:], x.dtype), state),
    )
    for _ in range(axes):
        query = jax.vmap(query)
    return query(state)
