"""The checksums of checkpoint format 1 (eqx_replay before BLAKE2b digests), kept only so
that `load_state` still reads and checks checkpoints written then: two position-weighted
sums modulo 2**32 per leaf. They miss some damage (two flipped sign bits of one leaf
cancel), which is why format 2 hashes the bytes with BLAKE2b; nothing writes them now.
"""

import functools as ft

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from jaxtyping import Array, PyTree, UInt32

from ._sharding import run, Shards, state_specs


# Elements checksummed at a time: only this many are converted to words at once.
_BLOCK = 1 << 20


def _words(x: Array) -> Array:
    """Elements as unsigned 32-bit words (a 64-bit element as two, in order)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = x.dtype.itemsize * 8
    unsigned = lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}"))
    if bits == 64:
        return lax.bitcast_convert_type(unsigned, jnp.uint32).reshape(-1)
    return unsigned.astype(jnp.uint32)


def _block_sums(block: Array, start: Array) -> UInt32[Array, "2"]:
    """The two sums of a 1-d block whose first element is element `start` of its leaf."""
    words = _words(block)
    per = words.shape[0] // max(1, block.shape[0])
    position = start * jnp.uint32(per) + lax.iota(jnp.uint32, words.shape[0])
    first = jnp.sum(words * (2 * position + 1), dtype=jnp.uint32)
    second = jnp.sum(
        (words ^ jnp.uint32(0x5BD1E995)) * (position * jnp.uint32(0x9E3779B1) | 1),
        dtype=jnp.uint32,
    )
    return jnp.stack([first, second])


def _leaf_sums(leaf: Array, offset: Array) -> UInt32[Array, "2"]:
    """Two position-weighted sums modulo 2**32 of a leaf's words, with odd weights: a change
    to any one element always changes both; changes that cancel in both have odds of about
    2**-64. Positions count from `offset` (where this part starts in the whole leaf), so the
    sums of the parts of a sharded leaf add up to the whole leaf's. Block by block, so
    that only one block at a time is converted to words."""
    flat = leaf.reshape(-1)
    size = flat.shape[0]
    whole = size // _BLOCK
    sums = jnp.zeros(2, jnp.uint32)
    if whole:
        sums = lax.fori_loop(
            0,
            whole,
            lambda b, acc: (
                acc
                + _block_sums(
                    lax.dynamic_slice_in_dim(flat, b * _BLOCK, _BLOCK),
                    offset + jnp.uint32(_BLOCK) * b.astype(jnp.uint32),
                )
            ),
            sums,
        )
    if size % _BLOCK or not size:
        sums = sums + _block_sums(flat[whole * _BLOCK :], offset + jnp.uint32(whole * _BLOCK))
    return sums


@ft.partial(jax.jit, static_argnums=(0, 1))
def _checksums(
    shards: Shards | None, specs: tuple[PartitionSpec, ...], leaves: list[Array]
) -> list[UInt32[Array, "2"]]:
    """Each leaf's sums, computed where the leaf is: a sharded state's on each device for
    its part (`specs`: how each leaf is split), added up across the devices (a replicated
    leaf counted once)."""
    if shards is None:
        return [_leaf_sums(leaf, jnp.uint32(0)) for leaf in leaves]
    axis = shards.axis

    def local(*parts: Array) -> list[Array]:
        index = lax.axis_index(axis).astype(jnp.uint32)
        sums = []
        for part, spec in zip(parts, specs):
            if len(spec):
                mine = _leaf_sums(part, index * jnp.uint32(part.size % 2**32))
            else:
                mine = jnp.where(index == 0, _leaf_sums(part, jnp.uint32(0)), jnp.uint32(0))
            sums.append(lax.psum(mine, axis))
        return sums

    return run(shards, local, tuple(leaves), tuple(specs), [PartitionSpec()] * len(leaves))


def checksum_list(sharding: NamedSharding | None, state: PyTree) -> list[list[int]]:
    """Each leaf's two format-1 sums, for a state of a buffer with this `sharding`."""
    leaves = jtu.tree_leaves(state)
    if sharding is None:
        shards, specs = None, ()
    else:
        shards = Shards(sharding, sharding.spec[0], 0)
        specs = tuple(
            jtu.tree_leaves(
                state_specs(shards, state), is_leaf=lambda x: isinstance(x, PartitionSpec)
            )
        )
    return [[int(v) for v in np.asarray(s)] for s in _checksums(shards, specs, leaves)]
