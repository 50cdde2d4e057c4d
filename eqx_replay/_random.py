"""Random bits, uniform floats and exact uniform indices for `sample`.

`jax.random.randint` splits its key and draws bits twice per call, and on CPU JAX lowers each
draw's Threefry-2x32 hash as a rolled loop of five iterations (to keep compile times short
for large programs). Drawing a window and a row that way cost ~30 us of fixed overhead per
`sample`, more than a small sample's gather. Here:

- `bits` returns exactly `jax.random.bits(key, shape, jnp.uint32)` for Threefry keys (the
  default), but computes the hash straight-line, which XLA fuses into one loop: ~10 us
  instead of ~30 us for a few hundred draws. Other key kinds go to `jax.random.bits`.
- `fold_in` and `split` return exactly `jax.random.fold_in(key, data)` and
  `jax.random.split(key, num)` for Threefry keys, the same way (a sharded buffer's devices
  fold their index into the key; the mixer splits its key between its buffers).
- `below` makes every index of a call from one `bits` draw, exactly: the index below `n` is
  `floor(u * n)` for a uniform 64-bit fraction `u`, computed in 32-bit integer arithmetic
  (JAX without `jax_enable_x64` has no 64-bit integers), so no index is more likely than
  another by more than `n / 2**64`.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Key, PRNGKeyArray, UInt32


# Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
# SC 2011): the rotation constants of its two alternating groups of four rounds, and the
# key-schedule parity constant.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _threefry2x32(
    key: UInt32[Array, "2"], high: UInt32[Array, "*n"], low: UInt32[Array, "*n"]
) -> tuple[UInt32[Array, "*n"], UInt32[Array, "*n"]]:
    """The Threefry-2x32 hash of the counters `(high, low)` under `key`."""
    schedule = (key[0], key[1], key[0] ^ key[1] ^ _PARITY)
    x0, x1 = high + schedule[0], low + schedule[1]
    for injection in range(1, 6):
        for rotation in _ROTATIONS[(injection - 1) % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation)))
        x0 = x0 + schedule[injection % 3]
        x1 = x1 + schedule[(injection + 1) % 3] + np.uint32(injection)
    return x0, x1


def _threefry_key(key: PRNGKeyArray) -> UInt32[Array, "2"] | None:
    """The key's two words when it is a Threefry key, else None."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jr.key_data(key) if str(jr.key_impl(key)) == "threefry2x32" else None
    default = jax.config.jax_default_prng_impl  # pyright: ignore[reportAttributeAccessIssue]
    return key if key.shape == (2,) and default == "threefry2x32" else None


def bits(key: PRNGKeyArray, shape: tuple[int, ...]) -> UInt32[Array, "*shape"]:
    """Exactly `jax.random.bits(key, shape, jnp.uint32)`, computed without a loop."""
    words = _threefry_key(key)
    size = math.prod(shape)
    partitionable = jax.config.jax_threefry_partitionable  # pyright: ignore[reportAttributeAccessIssue]
    if words is None or not partitionable or size >= 2**32:
        return jr.bits(key, shape, jnp.uint32)
    # JAX's counters are the flat element indices, as (high, low) 32-bit words.
    low = jnp.arange(size, dtype=jnp.uint32)
    high, low = _threefry2x32(words, jnp.zeros_like(low), low)
    return (high ^ low).reshape(shape)


def _keys_at(key: PRNGKeyArray, words: UInt32[Array, "2"], counters: Array) -> Array:
    """The keys JAX derives from `key` at `counters`: the Threefry hash of each counter pair
    `(0, counter)` under the key is a new key's two words (`fold_in`, and `split` in JAX's
    partitionable mode), wrapped like `key`."""
    low = counters.astype(jnp.uint32)
    new = jnp.stack(_threefry2x32(words, jnp.zeros_like(low), low), axis=-1)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jr.wrap_key_data(new, impl=jr.key_impl(key))
    return new


def fold_in(key: PRNGKeyArray, data: Int[ArrayLike, ""]) -> PRNGKeyArray:
    """Exactly `jax.random.fold_in(key, data)` for a non-negative int32 `data`, computed
    without a loop for Threefry keys."""
    words = _threefry_key(key)
    if words is None:
        return jr.fold_in(key, data)
    return _keys_at(key, words, jnp.asarray(data))


def split(key: PRNGKeyArray, num: int) -> Key[Array, " {num}"] | UInt32[Array, "{num} 2"]:
    """Exactly `jax.random.split(key, num)`, computed without a loop for Threefry keys."""
    words = _threefry_key(key)
    partitionable = jax.config.jax_threefry_partitionable  # pyright: ignore[reportAttributeAccessIssue]
    if words is None or not partitionable:
        return jr.split(key, num)
    return _keys_at(key, words, jnp.arange(num))


def uniform(key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "*shape"]:
    """Exactly `jax.random.uniform(key, shape)` (float32 in `[0, 1)`), from `bits`."""
    return to_uniform(bits(key, shape))


def to_uniform(word: UInt32[Array, "*shape"]) -> Float[Array, "*shape"]:
    """A float32 in `[0, 1)` from a random 32-bit word, as `jax.random.uniform` makes it."""
    mantissa = word >> np.uint32(32 - 23)
    one = np.float32(1.0).view(np.uint32)
    return jax.lax.bitcast_convert_type(mantissa | one, jnp.float32) - np.float32(1.0)


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
    high_word: UInt32[Array, "*shape"],
    low_word: UInt32[Array, "*shape"],
    n: UInt32[Array, "*#shape"],
) -> UInt32[Array, "*shape"]:
    """`floor((high_word * 2**32 + low_word) * n / 2**64)`, exactly."""
    # The high word of high_word * n, plus the carry out of its low word plus the high word
    # of low_word * n. (The low word of low_word * n cannot change the floor.)
    high, low = _multiply(high_word, n)
    carry_in = _multiply(low_word, n)[0]
    return high + (low + carry_in < low).astype(jnp.uint32)


def below(
    key: PRNGKeyArray, shape: tuple[int, ...], bounds: tuple[Int[ArrayLike, "..."], ...]
) -> tuple[Int[Array, "..."], ...]:
    """For each bound `n`, independent integers uniform in `[0, n)` of the given shape (all
    zeros where `n == 0`), from a single draw of random bits. A bound is a scalar or an
    array of bounds that broadcasts against `shape`, one per integer."""
    words = bits(key, (len(bounds), 2, *shape))
    return tuple(
        scale(high_word, low_word, jnp.asarray(bound).astype(jnp.uint32)).astype(jnp.int32)
        for (high_word, low_word), bound in zip(words, bounds)
    )


def words(key: PRNGKeyArray, shape: tuple[int, ...]) -> tuple[UInt32[Array, "*shape"], ...]:
    """Two independent random 32-bit words per element, both from one Threefry hash (its
    two outputs), so half the hashing of `bits(key, (2, *shape))`: for the draws no JAX or
    Flashbax function has to reproduce. Other key kinds draw `bits`."""
    key_words = _threefry_key(key)
    size = math.prod(shape)
    if key_words is None or size >= 2**32:
        high, low = bits(key, (2, *shape))
        return high, low
    counters = jnp.arange(size, dtype=jnp.uint32)
    high, low = _threefry2x32(key_words, jnp.zeros_like(counters), counters)
    return high.reshape(shape), low.reshape(shape)


# `below_flagged`'s blocks of flags.
_BLOCK = 128

# `Ranked`'s groups of blocks.
_GROUP = 32


class Ranked(NamedTuple):
    """Counts of items by blocks, grouped by `_GROUP` blocks, with the groups' running
    totals: enough to find the block of an item from its rank (`locate`) without every
    block's running sum, which XLA's CPU makes a dozen kernels (see `ranked`)."""

    grouped: Int[Array, "groups group"]
    totals: Int[Array, " groups"]
    running: Int[Array, " groups"]
    blocks: int

    @property
    def total(self) -> Int[Array, ""]:
        """How many items there are."""
        return self.running[-1]

    def locate(
        self, rank: Int[Array, " count"]
    ) -> tuple[Int[Array, " count"], Int[Array, " count"]]:
        """For each `rank` (`0 <= rank < total`, the items taken in order): the block
        holding the item of that rank, and the item's rank inside its block. Its group
        from the groups' running totals, then its block from the group's counts, with
        no loop (`jnp.searchsorted`'s binary search is one, of a small step per
        halving). A `rank` out of range gives some block in range (and a rank that may not
        be in it)."""
        groups = self.totals.shape[0]
        group = jnp.sum(self.running <= rank[:, None], axis=1, dtype=jnp.int32)
        group = jnp.minimum(group, groups - 1)
        rank = rank - (self.running[group] - self.totals[group])
        counts = self.grouped[group]
        inner = jnp.cumsum(counts, axis=1, dtype=jnp.int32)
        place = jnp.sum(inner <= rank[:, None], axis=1, dtype=jnp.int32)
        place = jnp.minimum(place, _GROUP - 1)
        before = jnp.take_along_axis(inner - counts, place[:, None], axis=1)[:, 0]
        return jnp.minimum(group * _GROUP + place, self.blocks - 1), rank - before


def ranked(counts: Int[Array, " blocks"]) -> Ranked:
    """`counts` grouped for `Ranked.locate` (padded with empty blocks to whole groups: no
    copy when they are already, as `padded_blocks` makes them)."""
    n = counts.shape[0]
    groups = -(-n // _GROUP)
    grouped = jnp.pad(counts, (0, groups * _GROUP - n)).reshape(groups, _GROUP)
    totals = jnp.sum(grouped, axis=1, dtype=jnp.int32)
    return Ranked(grouped, totals, jnp.cumsum(totals, dtype=jnp.int32), n)


def padded_blocks(blocks: int) -> int:
    """`blocks` rounded up to whole groups of `Ranked`."""
    return -(-blocks // _GROUP) * _GROUP


def nth_true(flags: Bool[Array, "count size"], n: Int[Array, " count"]) -> Int[Array, " count"]:
    """For each row of `flags`, the place of its True flag of rank `n` (0 for the first),
    for `0 <= n <` the row's number of True flags (otherwise some place in range).

    The flags are packed into 32-bit words; the word is found from the words' running bit
    counts, then the bit by halving the word five times, counting the set bits of its
    lower half each time. Elementwise work after one packing sum, which XLA's CPU fuses
    into a few kernels (with it, `sample_episodes` of 64 windows at 1M steps went from
    1.47-1.49x of `sample` to 1.29-1.38x, `benchmarks/episodes.py`'s rows alone)."""
    count, size = flags.shape
    assert size % 32 == 0
    shifts = jnp.arange(32, dtype=jnp.uint32)
    words = jnp.sum(flags.reshape(count, size // 32, 32).astype(jnp.uint32) << shifts, axis=2)
    counts = jax.lax.population_count(words).astype(jnp.int32)
    running = jnp.cumsum(counts, axis=1, dtype=jnp.int32)
    word = jnp.minimum(jnp.sum(running <= n[:, None], axis=1, dtype=jnp.int32), size // 32 - 1)
    rank = n - jnp.take_along_axis(running - counts, word[:, None], axis=1)[:, 0]
    bits = jnp.take_along_axis(words, word[:, None], axis=1)[:, 0]
    place = jnp.zeros_like(n)
    for half in (16, 8, 4, 2, 1):
        lower = bits & np.uint32((1 << half) - 1)
        below_half = jax.lax.population_count(lower).astype(jnp.int32)
        upper = rank >= below_half
        rank = jnp.where(upper, rank - below_half, rank)
        bits = jnp.where(upper, bits >> np.uint32(half), lower)
        place = place + jnp.where(upper, half, 0)
    return word * 32 + place


def count_blocks(blocks: Bool[Array, "blocks size"]) -> Int[Array, " blocks"]:
    """The True flags of each block: each block's quarters added as bytes, lane by lane
    (at most 4 per byte), then the quarter's lanes summed. XLA's CPU vectorises an add
    across rows of bytes far better than a sum along one: for 1M flags in blocks of 128,
    ~40 us, against ~77 us reading the bytes as 32-bit words four at a time and ~310 us
    for XLA's own int32 sum of the flags."""
    count, size = blocks.shape
    assert size % 4 == 0
    quarters = blocks.astype(jnp.uint8).reshape(count, 4, size // 4)
    lanes = jnp.sum(quarters, axis=1, dtype=jnp.uint8)
    return jnp.sum(lanes, axis=1, dtype=jnp.int32)


class Flagged(NamedTuple):
    """Flags `(rows, n)` counted by blocks of `_BLOCK`, the counts `Ranked` (see
    `count_flagged`)."""

    blocks: Bool[Array, "blocks size"]
    counts: Ranked
    width: int  # `n` padded to a multiple of `_BLOCK`
    n: int

    @property
    def total(self) -> Int[Array, ""]:
        """How many flags are True."""
        return self.counts.total


def count_flagged(flags: Bool[Array, "rows n"]) -> Flagged:
    """The flags' counts by blocks of `_BLOCK`."""
    n = flags.shape[1]
    width = -(-n // _BLOCK) * _BLOCK
    blocks = jnp.pad(flags, ((0, 0), (0, width - n))).reshape(-1, _BLOCK)
    return Flagged(blocks, ranked(count_blocks(blocks)), width, n)


def find_flagged(
    flagged: Flagged, rank: Int[Array, " count"]
) -> tuple[Int[Array, " count"], Int[Array, " count"]]:
    """The cells `(rows, columns)` of the True flags of ranks `rank` (in row-major order,
    `0 <= rank < total`; another rank gives some cell of `flags`): its block from the
    blocks' counts (`Ranked.locate`), then its place among the block's flags."""
    blocks, counts, width, n = flagged
    block, inside = counts.locate(rank)
    place = nth_true(blocks[block], inside)
    # Row by row (`rows * width` may exceed int32 where `rows * n` does not).
    row, column_block = jnp.divmod(block, width // _BLOCK)
    return row, jnp.minimum(column_block * _BLOCK + place, n - 1)


def below_flagged(
    key: PRNGKeyArray, flags: Bool[Array, "rows n"], count: int
) -> tuple[Int[Array, " count"], Int[Array, " count"], Int[Array, ""]]:
    """`count` cells drawn uniformly, with replacement, among those of `flags` that are
    True, exactly: one index below their number (`below`), found by `find_flagged`.

    **Returns:** `(rows, columns, total)`: the cells drawn, and how many are True (when
    none is, the cells are arbitrary)."""
    flagged = count_flagged(flags)
    (rank,) = below(key, (count,), (flagged.total,))
    row, column = find_flagged(flagged, rank)
    return row, column, flagged.total
