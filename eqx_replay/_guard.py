"""What `sample` returns when the buffer cannot be sampled yet.

Flashbax hands back zeros, which look like data. We hand back poison: every element of every
leaf is NaN (floating and complex dtypes), the dtype's largest value (integers) or True
(booleans) -- Equinox's convention for `EQX_ON_ERROR=nan` -- so a loss computed from it is
NaN at once. We do not raise with `eqx.error_if`: on CPU a program that contains its host
callback runs several times slower even when the callback is never called (measured in
`benchmarks/sample_guard_cost.py`), and that would slow every training step that samples.
The poison is one `select` fused into the gather, a few microseconds per call.
"""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Shaped


def poison(dtype: np.dtype) -> Array:
    """The poison value of `dtype`."""
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.array(jnp.nan, dtype)
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.array(jnp.iinfo(dtype).max, dtype)
    if jnp.issubdtype(dtype, jnp.bool_):
        return jnp.array(True)
    raise TypeError(f"no poison value for dtype {dtype}")


def poison_unless(ok: Bool[Array, ""], x: Shaped[Array, "..."]) -> Shaped[Array, "..."]:
    """`x` where `ok`, otherwise `x`'s shape filled with poison."""
    return jnp.where(ok, x, poison(x.dtype))
