"""The base of the Modules that carry a buffer's arrays in and out of every call, and what
a state declares about its fields."""

import abc
import dataclasses
from typing import Literal

import equinox as eqx
from jaxtyping import Array, Bool, Int, PyTree


class Data(eqx.Module):
    """An `eqx.Module` that is flattened on every call it takes part in: states, samples and
    the sum tree.

    JAX flattens a Module with the function Equinox generates for it, which reads the
    instance's `__dict__`; every attribute read goes through `eqx.Module.__getattribute__`,
    which is written in Python so that a method looked up on a Module comes back as a
    Module too (`eqx.BoundMethod`). These classes hold data, so they use `object`'s lookup:
    flattening a state gets cheaper per Module, which shows in the per-call cost of `add`
    (`benchmarks/dispatch_cost.py`).

    The one difference a user can see: a method looked up on one of these (such as
    `SumTree.sample`) is a plain bound method, so a transform it is passed to closes over
    the instance's arrays instead of tracing them; pass the instance as an argument to trace
    them.
    """

    __getattribute__ = object.__getattribute__


# What a state field is when its buffer's rows are split over devices (`_sharding`):
# "rows", split along its first axis as the rows are; "replicated", the same on every
# device (all rows advance together); "per_device", one entry per device, stacked along a
# leading axis (a device's own sum tree).
Role = Literal["rows", "replicated", "per_device"]
_ROLE = "eqx_replay.role"


# A state field's declaration: `current_index: Int[Array, ""] = eqx.field(metadata=REPLICATED)`.
ROWS: dict[str, Role] = {_ROLE: "rows"}
REPLICATED: dict[str, Role] = {_ROLE: "replicated"}
PER_DEVICE: dict[str, Role] = {_ROLE: "per_device"}


def field_roles(state: "AbstractState") -> dict[str, Role]:
    """The role of each array field of `state` (see `ROWS`, `REPLICATED`, `PER_DEVICE`)."""
    roles = {}
    for field in dataclasses.fields(state):
        if field.metadata.get("static", False):
            continue
        if _ROLE not in field.metadata:
            raise TypeError(f"{type(state).__name__}.{field.name} declares no `role`")
        roles[field.name] = field.metadata[_ROLE]
    return roles


class AbstractState(Data):
    """A buffer's state: its stored experience on a ring, the ring's write head and
    `is_full` (whether the ring has wrapped; for a queue, whether every stored step is
    unread). Every array field declares its role under sharding (`ROWS`, `REPLICATED` or
    `PER_DEVICE` as its metadata).

    `is_full` is a scalar in one buffer's state: the number of axes of `is_full` is the
    number of batch axes that `jax.pmap(buffer.add)` or `jax.vmap` put in front of every
    field.
    """

    experience: eqx.AbstractVar[PyTree[Array]]
    is_full: eqx.AbstractVar[Bool[Array, ""]]

    @property
    @abc.abstractmethod
    def _write_head(self) -> Int[Array, ""]:
        """The time index the next added step is written at (`current_index`, or a
        queue's `write_index`)."""


class AbstractSample(Data):
    """A buffer's sample: its `experience`, poisoned when the buffer could not be
    sampled."""

    experience: eqx.AbstractVar[PyTree[Array]]


class AbstractMaskedSample(AbstractSample):
    """A sample of windows that may carry a `mask` (with `boundary="mask"`), poisoned with
    the experience."""

    mask: eqx.AbstractVar[Bool[Array, "samples length"] | None]
