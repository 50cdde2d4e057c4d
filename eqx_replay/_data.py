"""The base of the Modules that carry a buffer's arrays in and out of every call."""

import equinox as eqx
from jaxtyping import Array, Bool


class Data(eqx.Module):
    """An `eqx.Module` that is flattened on every call it takes part in: states, samples and
    the sum tree.

    JAX flattens a Module with the function Equinox generates for it, which reads the
    instance's `__dict__`; every attribute read goes through `eqx.Module.__getattribute__`,
    which is written in Python so that a method looked up on a Module comes back as a
    Module too (`eqx.BoundMethod`). These classes hold data, so they use `object`'s lookup:
    flattening a state gets about 0.8 us cheaper per Module, which is 3 us (12%) of a
    prioritised `add` and 1.3 us (9%) of a trajectory `add`, measured side by side.

    The one difference a user can see: a method looked up on one of these (such as
    `SumTree.sample`) is a plain bound method, so a transform it is passed to closes over
    the instance's arrays instead of tracing them; pass the instance as an argument to trace
    them.
    """

    __getattribute__ = object.__getattribute__


class AbstractState(Data):
    """A buffer's state. Every kind's state says whether its ring has wrapped, a scalar in
    one buffer's state: the number of axes of `is_full` is the number of batch axes that
    `jax.pmap(buffer.add)` or `jax.vmap` put in front of every field."""

    is_full: eqx.AbstractVar[Bool[Array, ""]]
