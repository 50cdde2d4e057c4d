"""Buffers sharded over a device mesh: each device stores its own rows and samples its own
windows, with no data crossing devices.

A buffer made with `sharding=NamedSharding(mesh, P(axis))` splits its rows
(`add_batch_size`) over the `n` devices of the mesh axis `axis`: device `d` holds rows
`[d * rows / n, (d + 1) * rows / n)` of every stored leaf. All rows advance together, so the
write head and the other scalars of the state are the same on every device, and are
replicated; a prioritised buffer keeps one sum tree per device (its fields declare which,
`_data.ROWS`, `REPLICATED`, `PER_DEVICE`). A uniform buffer's state is element for element
the unsharded buffer's, only placed.

Every call that touches the rows runs through `jax.shard_map`: inside it, each device runs
the *local* buffer, the same kind with `rows / n` rows and `sample_batch_size / n` draws,
on its own rows. A sample is the concatenation, in device order, of the devices' draws, and
is split over the same axis along its first dimension. The key is replicated; device `d`
draws with `jax.random.fold_in(key, d)`.

Nothing here is a transport of its own: JAX's runtime moves nothing between devices for
`add` and `sample`, and `jax.distributed` makes the same program run over several
processes, each holding the rows of its own devices.
"""

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.sharding import NamedSharding, PartitionSpec
from jaxtyping import PyTree

from ._data import AbstractState, field_roles, Role
from ._guard import poison_sample
from ._random import fold_in


_T = TypeVar("_T")


class Shards(NamedTuple):
    """How a buffer's rows are split (static): the user's sharding, the mesh axis (or axes)
    its spec names for the rows, and how many devices that is."""

    sharding: NamedSharding
    axis: str | tuple[str, ...]
    count: int

    @property
    def rows(self) -> NamedSharding:
        """Leaves split along their first axis."""
        return NamedSharding(self.sharding.mesh, PartitionSpec(self.axis))


def shard_config(where: str, sharding: object, **sizes: int | None) -> Shards | None:
    """Checks a constructor's `sharding` against the sizes that must split over it (e.g.
    `add_batch_size`, `sample_batch_size`), naming the argument that does not.

    **Returns:** the `Shards`, or None for `sharding=None`.
    """
    if sharding is None:
        return None
    if not isinstance(sharding, NamedSharding):
        raise TypeError(
            f"`{where}`: `sharding` must be a `jax.sharding.NamedSharding` whose spec names "
            "the mesh axis the rows are split over, e.g. "
            f"`NamedSharding(mesh, PartitionSpec('data'))`, or None; got {sharding!r}"
        )
    spec = tuple(sharding.spec)
    axis = spec[0] if spec else None
    names = (axis,) if isinstance(axis, str) else axis
    if not names or any(entry is not None for entry in spec[1:]):
        raise ValueError(
            f"`{where}`: `sharding`'s spec must name the mesh axis (or axes) the rows are "
            f"split over as its first entry and nothing else, e.g. PartitionSpec('data'); "
            f"got {sharding.spec}"
        )
    mesh = sharding.mesh
    unknown = [name for name in names if name not in mesh.axis_names]
    if unknown:
        raise ValueError(
            f"`{where}`: `sharding` names the mesh axis {unknown[0]!r}, which its mesh "
            f"does not have (axes {tuple(mesh.axis_names)})"
        )
    count = math.prod(mesh.shape[name] for name in names)
    for name, size in sizes.items():
        if size is None:
            raise ValueError(
                f"`{where}`: a sharded buffer needs rows to split: `{name}` must be an int "
                f"divisible by the {count} devices of mesh axis {axis!r}; got None"
            )
        if size % count:
            raise ValueError(
                f"`{where}`: `{name}` must divide evenly over the {count} devices of mesh "
                f"axis {axis!r}; got {size}"
            )
    return Shards(sharding, axis, count)  # pyright: ignore[reportArgumentType] # checked


def quietly(make: Callable[[], _T]) -> _T:
    """`make()`, a local buffer, without repeating the warnings its configuration already
    gave when the sharded buffer was made."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


def _roles(state: AbstractState) -> list[Role]:
    """The role of each leaf of a state, declared by its field (`_data.ROWS`,
    `REPLICATED`, `PER_DEVICE`): the experience's leaves are split along their first axis as
    the rows are; replicated leaves are the same on every device; per-device ones (a
    prioritised buffer's sum tree, generations and largest priority) are stacked along a
    leading axis of size `n`."""
    roles, leaf_roles = field_roles(state), []
    for path, _ in jtu.tree_flatten_with_path(state)[0]:
        field = path[0]  # every leaf of a state is under one of its fields
        assert isinstance(field, jtu.GetAttrKey)
        leaf_roles.append(roles[field.name])
    return leaf_roles


def _by_role(state: AbstractState, fn: Callable[[Role, Any], Any]) -> Any:
    """`fn(role, leaf)` on every leaf of `state`."""
    leaves, structure = jtu.tree_flatten(state)
    return jtu.tree_unflatten(structure, [fn(r, x) for r, x in zip(_roles(state), leaves)])


def state_specs(shards: Shards, state: Any) -> Any:
    """The spec of each leaf of a (global) state: see `_roles`."""
    split = PartitionSpec(shards.axis)
    return _by_role(state, lambda role, _: PartitionSpec() if role == "replicated" else split)


def to_local(state: Any) -> Any:
    """Inside `run`: a device's part of a state as its local buffer's state (the leading
    axis of its per-device leaves dropped)."""
    return _by_role(state, lambda role, x: x[0] if role == "per_device" else x)


def to_global(state: Any) -> Any:
    """Inside `run`: a local state as this device's part of the global state."""
    return _by_role(state, lambda role, x: x[None] if role == "per_device" else x)


def global_state(shards: Shards, state: Any) -> Any:
    """The global state whose every device part is the local `state` (for shapes)."""
    n = shards.count

    def widen(role: Role, x: Any) -> Any:
        if role == "rows":
            return jnp.concatenate([x] * n)
        return jnp.broadcast_to(x, (n, *x.shape)) if role == "per_device" else x

    return _by_role(state, widen)


def placed(shards: Shards, state: PyTree) -> PyTree:
    """Places a state (inside `jit`): rows split, the rest replicated."""
    specs = state_specs(shards, state)
    mesh = shards.sharding.mesh
    return jtu.tree_map(
        lambda x, spec: _place(x, NamedSharding(mesh, spec)),
        state,
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def rows(shards: Shards, tree: PyTree) -> PyTree:
    """Places a batch's leaves (inside `jit`) split along their first axis, as the rows
    are; a batch already placed so is left as it is."""
    return jtu.tree_map(lambda x: _place(x, shards.rows), tree)


def _place(x: Any, sharding: NamedSharding) -> Any:
    explicit = any(kind == jax.sharding.AxisType.Explicit for kind in sharding.mesh.axis_types)
    if explicit:
        return jax.sharding.reshard(x, sharding)
    return lax.with_sharding_constraint(x, sharding)


def run(
    shards: Shards,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    in_specs: tuple[Any, ...],
    out_specs: Any,
) -> Any:
    """`fn(*args)` on each device's part of `args`, through `jax.shard_map`.

    `check_vma=False`: the buffers' loops start from constants and carry per-device values,
    which JAX's varying-axes check refuses; what the specs say is replicated (the write
    head, fullness) is computed from replicated values alone, identically on every device.
    """
    mesh = shards.sharding.mesh
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    return mapped(*args)


def device_key(shards: Shards, key: Any) -> Any:
    """Inside `run`: this device's key, `jax.random.fold_in(key, device index along the
    axis)` (computed without JAX's loop, `_random.fold_in`)."""
    return fold_in(key, lax.axis_index(shards.axis))


def sharded_empty(shards: Shards, local_buffer: Any, experience: PyTree) -> Any:
    """An empty global state: each device makes its local buffer's empty state, allocating
    only its own rows."""
    shapes = jax.eval_shape(lambda: global_state(shards, local_buffer._empty(experience)))
    specs = state_specs(shards, shapes)
    make = jax.shard_map(
        lambda: to_global(local_buffer._empty(experience)),
        mesh=shards.sharding.mesh,
        in_specs=(),
        out_specs=specs,
        check_vma=False,
    )
    return jax.jit(make)()


def sharded_write(shards: Shards, local_buffer: Any, where: str, state: Any, batch: PyTree) -> Any:
    """Inside `add` (after its checks): each device writes its rows of `batch`, shaped
    `(rows, t, ...)`, with the local buffer's `_write`."""
    specs = state_specs(shards, state)
    return run(
        shards,
        lambda s, b: to_global(local_buffer._write(where, to_local(s), b)),
        (placed(shards, state), rows(shards, batch)),
        (specs, PartitionSpec(shards.axis)),
        specs,
    )


def sharded_sample(
    shards: Shards,
    local_buffer: Any,
    where: str,
    state: Any,
    key: Any,
    finish: Callable[[Any, Any], Any],
    local_draw: Callable[[Any, Any, int], Any] | None = None,
) -> Any:
    """Inside `sample` (after its checks): each device draws `sample_batch_size / n` items
    from its rows with its own key, poisoned unless it can be sampled, then `finish(local
    state, sample)`; the sample is the devices' samples in device order. `local_draw(state,
    key, count)`, when given, draws a device's poisoned sample instead of `sample`'s."""
    specs = state_specs(shards, state)

    def draw(state: Any, key: Any) -> Any:
        state = to_local(state)
        count = local_buffer.sample_batch_size
        key = device_key(shards, key)
        if local_draw is not None:
            return finish(state, local_draw(state, key, count))
        sample = poison_sample(*local_buffer._draw(where, state, key, count))
        return finish(state, sample)

    return run(
        shards,
        draw,
        (placed(shards, state), key),
        (specs, PartitionSpec()),
        PartitionSpec(shards.axis),
    )


def sharded_totals(shards: Shards, state: Any) -> Any:
    """Each device's sum-tree total, `(n,)`, split over the axis."""
    specs = state_specs(shards, state)
    return run(
        shards,
        lambda s: to_local(s).priorities.total()[None],
        (placed(shards, state),),
        (specs,),
        PartitionSpec(shards.axis),
    )


def sharded_set_priorities(
    shards: Shards,
    local_buffer: Any,
    where: str,
    state: Any,
    indices: Any,
    priorities: Any,
    local_handles: Callable[[Any, Any], Any],
) -> Any:
    """Inside `set_priorities` (after its checks): the `j`-th of `n` equal parts of
    `indices` and `priorities` goes to device `j`, which turns the handles into its own
    (`local_handles`; handles drawn by another device are ignored) and updates its tree."""
    if indices.shape[0] % shards.count:
        raise ValueError(
            f"`{where}`: `indices` has {indices.shape[0]} entries, which do not split over "
            f"the {shards.count} devices of mesh axis {shards.axis!r}: pass the sample's "
            "indices in the sample's order (device j's draws are its j-th part)"
        )
    specs = state_specs(shards, state)

    def update(state: Any, indices: Any, priorities: Any) -> Any:
        state = to_local(state)
        mine = local_handles(state, indices)
        return to_global(local_buffer._set_priorities(where, state, mine, priorities))

    return run(
        shards,
        update,
        (placed(shards, state), rows(shards, indices), rows(shards, priorities)),
        (specs, PartitionSpec(shards.axis), PartitionSpec(shards.axis)),
        specs,
    )


def sharded_read(shards: Shards, local_queue: Any, state: Any) -> tuple[Any, Any]:
    """Inside a queue's `sample` (after its checks): each device reads its own rows."""
    specs = state_specs(shards, state)
    return run(
        shards,
        local_queue._read,
        (placed(shards, state),),
        (specs,),
        (specs, PartitionSpec(shards.axis)),
    )
