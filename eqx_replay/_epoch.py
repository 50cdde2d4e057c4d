"""Epochs: every window a buffer can draw, each once, in a uniformly random order, as a
fixed number of batches (`epoch` on the trajectory, flat and item kinds).

The candidates are every window the buffer might hold (a fixed number, from the
configuration), each with whether it can be drawn now. One sort orders them: those that
can be drawn first, among them by 64 random bits each (a uniformly random order, up to
ties of 64-bit numbers), the others after. The first `M * S` are read as one sample of
`M * S` windows and cut into `M` batches of `S`; the batches run past the windows that can
be drawn into padding, which is poisoned.
"""

from collections.abc import Callable
from typing import Any

import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, PRNGKeyArray

from ._guard import poison
from ._random import bits
from ._windows import Drawn


def epoch(
    key: PRNGKeyArray,
    every: Drawn,
    eligible: Bool[Array, " candidates"],
    max_items: int,
    batch: int,
    sample_of: Callable[[Drawn], Any],
) -> tuple[Any, Bool[Array, "M S"]]:
    """The epoch of a buffer: `every` window it might hold, of which `eligible` can be
    drawn (at most `max_items`), read by `sample_of` as `M = ceil(max_items / batch)`
    batches of `batch`.

    **Returns:** `(sample, mask)`: the sample's leaves `(M, batch, ...)`, and `mask`
    `(M, batch)`, True for the windows that can be drawn (first) and False for the
    padding, every leaf of which is poison."""
    batches = -(-max_items // batch)
    total = batches * batch
    candidates = eligible.shape[0]
    if candidates < total:  # padding that is never eligible
        extra = total - candidates
        padded = jtu.tree_map(
            lambda x: jnp.concatenate([x, jnp.zeros((extra,), x.dtype)]),
            (every.rows, every.starts, every.indices, every.probabilities, eligible),
        )
        rows, starts, indices, probabilities, eligible = padded
        every = Drawn(rows, starts, every.ok, indices, probabilities)
    high, low = bits(key, (2, eligible.shape[0]))
    position = jnp.arange(eligible.shape[0], dtype=jnp.int32)
    *_, order = lax.sort((~eligible, high, low, position), num_keys=3)
    order = order[:total]
    count = jnp.sum(eligible, dtype=jnp.int32)
    picked = Drawn(
        every.rows[order],
        every.starts[order],
        count > 0,
        None if every.indices is None else every.indices[order],
        None if every.probabilities is None else every.probabilities[order],
    )
    real = jnp.arange(total, dtype=jnp.int32) < count
    sample = sample_of(picked)

    def batched(x: Array) -> Array:
        shape = real.shape + (1,) * (x.ndim - 1)
        x = jnp.where(real.reshape(shape), x, poison(x.dtype))
        return x.reshape((batches, batch, *x.shape[1:]))

    return jtu.tree_map(batched, sample), real.reshape(batches, batch)
