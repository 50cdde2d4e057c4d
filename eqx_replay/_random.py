"""Uniform random indices from one draw of random bits.

`jax.random.randint` splits its key and draws bits twice per call; on CPU each draw is a
rolled threefry loop, so drawing a window and a row that way costs ~30 us per `sample` of
fixed overhead. Here every index comes from one `jax.random.bits` call, and is exact: the
index below `n` is `floor(u * n)` for a uniform 64-bit fraction `u`, computed in 32-bit
integer arithmetic (JAX without `jax_enable_x64` has no 64-bit integers), so no index is
more likely than another by more than `n / 2**64`.
"""

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray, UInt32


def _multiply(
    a: UInt32[Array, "*shape"], b: UInt32[Array, "*#shape"]
) -> tuple[UInt32[Array, "*shape"], UInt32[Array, "*shape"]]:
    """The 64-bit product `a * b` as its high and low 32-bit words."""
    mask = jnp.uint32(0xFFFF)
    a_hi, a_lo, b_hi, b_lo = a >> 16, a & mask, b >> 16, b & mask
    low_low, low_high, high_low = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo
    middle = (low_low >> 16) + (low_high & mask) + (high_low & mask)
    high = a_hi * b_hi + (low_high >> 16) + (high_low >> 16) + (middle >> 16)
    return high, a * b


def scale(
    high_word: UInt32[Array, "*shape"], low_word: UInt32[Array, "*shape"], n: UInt32[Array, ""]
) -> UInt32[Array, "*shape"]:
    """`floor((high_word * 2**32 + low_word) * n / 2**64)`, exactly."""
    # The high word of high_word * n, plus the carry out of its low word plus the high word
    # of low_word * n. (The low word of low_word * n cannot change the floor.)
    high, low = _multiply(high_word, n)
    carry_in = _multiply(low_word, n)[0]
    return high + (low + carry_in < low).astype(jnp.uint32)


def below(
    key: PRNGKeyArray, shape: tuple[int, ...], bounds: tuple[Int[ArrayLike, ""], ...]
) -> tuple[Int[Array, "..."], ...]:
    """For each bound `n`, independent integers uniform in `[0, n)` of the given shape (all
    zeros where `n == 0`), from a single draw of random bits."""
    bits = jr.bits(key, (len(bounds), 2, *shape), jnp.uint32)
    return tuple(
        scale(high_word, low_word, jnp.asarray(bound).astype(jnp.uint32)).astype(jnp.int32)
        for (high_word, low_word), bound in zip(bits, bounds)
    )
