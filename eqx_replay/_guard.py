"""What `sample` returns when the buffer cannot be sampled yet.

Flashbax hands back zeros, which look like data. We hand back poison: every element of every
leaf is NaN (floating and complex dtypes), the dtype's largest value (integers) or True
(booleans) -- Equinox's convention for `EQX_ON_ERROR=nan` -- so a loss computed from it is
NaN at once. We do not raise with `eqx.error_if`: on CPU a program that contains its host
callback runs several times slower even when the callback is never called (measured in
`benchmarks/sample_guard_cost.py`), and that would slow every training step that samples.
A sample of up to `_SELECT_BYTES` is poisoned by a select, which XLA fuses into the sample's
own writes, on every platform. A larger one, on the CPU, by a loop that runs only when the
buffer cannot be sampled (a predicate test per call, where a select that cannot be fused
would pass over megabytes of windows); on an accelerator, where a loop's predicate costs a
synchronisation with the host, by the select. Why not the loop for every sample on the CPU:
alone, a sample pays nothing measurable for it, but inside a training step's own loops it
did: the DQN of `benchmarks/dqn_flashbax.py` (128 samples of 128 pairs per learning phase)
ran 0.93x Flashbax's env steps/s with the loop and 1.03x with a select.
"""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Bool, PyTree, Shaped

from ._control import by_platform, run_if
from ._data import AbstractMaskedSample


def poison(dtype: np.dtype) -> Array:
    """The poison value of `dtype`."""
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.array(jnp.nan, dtype)
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.array(jnp.iinfo(dtype).max, dtype)
    if jnp.issubdtype(dtype, jnp.bool_):
        return jnp.array(True)
    raise TypeError(f"no poison value for dtype {dtype}")


def poison_unless(
    ok: Bool[Array, ""], x: PyTree[Shaped[Array, "..."]]
) -> PyTree[Shaped[Array, "..."]]:
    """`x` where `ok`, otherwise every leaf of `x` filled with poison: by a select when `x`
    is small; otherwise on the CPU by a loop that runs only when `ok` is false, elsewhere
    by a select (see the module docstring and `_control.by_platform`)."""
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jtu.tree_leaves(x))
    if size <= _SELECT_BYTES:
        return poison_selected(ok, x)
    return by_platform(poison_looped, poison_selected, ok, x)


# The largest sample (in bytes, all leaves) poisoned by a select on the CPU too.
_SELECT_BYTES = 1 << 18


def poison_looped(ok: Bool[Array, ""], x: PyTree[Shaped[Array, "..."]]) -> PyTree[Array]:
    """`poison_unless` as a loop that runs only when `ok` is false (the CPU's)."""
    return run_if(
        ~ok, lambda x: jtu.tree_map(lambda leaf: jnp.full_like(leaf, poison(leaf.dtype)), x), x
    )


def poison_selected(ok: Bool[Array, ""], x: PyTree[Shaped[Array, "..."]]) -> PyTree[Array]:
    """`poison_unless` as a select (an accelerator's)."""
    return jtu.tree_map(lambda leaf: jnp.where(ok, leaf, poison(leaf.dtype)), x)


def poison_sample(ok: Bool[Array, ""], sample: Any) -> Any:
    """`sample` where `ok`, otherwise with its `experience` (and its `mask`, when it has
    one) filled with poison; handles and probabilities are left to the buffer."""
    mask = sample.mask if isinstance(sample, AbstractMaskedSample) else None
    experience, mask = poison_unless(ok, (sample.experience, mask))
    sample = eqx.tree_at(lambda s: s.experience, sample, experience)
    if mask is not None:
        sample = eqx.tree_at(lambda s: s.mask, sample, mask)
    return sample
