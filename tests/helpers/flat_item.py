"""The flat and item buffers, uniform and prioritised, beside Flashbax's: the kinds as
parameters, their batches in every add mode, many samples at once."""

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import eqx_replay


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import flashbax


EXAMPLE = {"obs": jnp.zeros(2, jnp.float32), "id": jnp.int32(0)}
ROW_CODE = 1000  # an added step's `id` is `row * ROW_CODE + its time along the row`

# (the name of the `make_*` function, the keyword of the batch axis, its value when there is
# one, and the size of that axis in the batches of these tests)
FLAT = ("make_flat_buffer", "add_batch_size", 3, 3)
ITEM = ("make_item_buffer", "add_batches", True, 3)
PRIORITISED_FLAT = ("make_prioritised_flat_buffer", "add_batch_size", 3, 3)
PRIORITISED_ITEM = ("make_prioritised_item_buffer", "add_batches", True, 3)
KINDS = [FLAT, ITEM, PRIORITISED_FLAT, PRIORITISED_ITEM]
MODES = [(False, False), (True, False), (False, True), (True, True)]  # (batches, sequences)


def make_both(kind, batches, sequences, **overrides):
    name, batch_keyword, batch_value, _ = kind
    config: dict[str, Any] = dict(
        max_length=24, min_length=7, sample_batch_size=5, add_sequences=sequences
    )
    if batches:
        config[batch_keyword] = batch_value
    config.update(overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(eqx_replay, name)(**config), getattr(flashbax, name)(**config)


def make(kind, batches=True, sequences=True, **overrides):
    return make_both(kind, batches, sequences, **overrides)[0]


def batch_for(kind, batches, sequences, steps, first_time, rng):
    """A batch in the add mode: rows (or items) `b` of `steps` steps, with ids."""
    rows = kind[3] if batches else 1
    steps = steps if sequences else 1
    ids = np.arange(rows)[:, None] * ROW_CODE + first_time + np.arange(steps)[None, :]
    batch = {
        "obs": rng.normal(size=(rows, steps, 2)).astype(np.float32),
        "id": ids.astype(np.int32),
    }

    def drop(x):
        if not sequences:
            x = x[:, 0]
        if not batches:
            x = x[0]
        return jnp.asarray(x)

    return jax.tree.map(drop, batch)


def many(buffer, state, draws):
    """`draws` samples, each of the buffer's batch size, in one compiled call."""
    keys = jr.split(jr.key(7), draws)
    return jax.jit(jax.vmap(buffer.sample, in_axes=(None, 0)))(state, keys)
