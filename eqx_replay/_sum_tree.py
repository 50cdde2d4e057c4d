"""A sum tree over non-negative priorities, exact in float32 however long it runs.

The tree is wide and shallow: every node has `FANOUT` (32) children, so a million items
need four levels. `levels[0]` holds the priorities of the items, and each entry of
`levels[i + 1]` is the float32 sum of a group of `FANOUT` consecutive entries of
`levels[i]`; every level is zero-padded to a whole number of groups, and the top level is a
single group whose sum is the total.

`set` writes the items and then recomputes every group sum above them from the group's
children, never by adding a difference, so each level is always exactly the sum of the one
below, whatever came before: there is no drift to accumulate (Flashbax's tree, updated by
differences, drifts until the root disagrees with its leaves and samples land on
zero-priority items).

Float32's limits: a priority a user sets can overflow the total (one 1e20 squared, or many
large priorities) or be too small for the CPU, which flushes subnormal floats to zero. Either
would break sampling silently: an infinite total sends every draw to the last item with
probability 0, and a flushed priority makes its window unreachable. So a positive priority
is stored as a value in `[smallest normal float32, float32 max / (2 * num_leaves)]`
(`priority_leaves`): the total stays finite (the factor 2 leaves room for rounding in the
sums), and every positive item keeps a positive share. A reported probability is floored at
the smallest normal float32, so that importance weights computed from it stay positive.

Why wide: on CPU each level of a descent or an update is a few small kernels, and their
launch cost, not arithmetic, is what a binary tree of depth 17 pays 17 times. Four levels
of 32-wide gathers and prefix sums cost a quarter of that, with no loop.
"""

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jaxtyping import Array, Bool, Float, Int, jaxtyped, PRNGKeyArray

from ._data import Data
from ._random import uniform


FANOUT = 32
# A descent walks a group's children in blocks of this many (see `SumTree.sample`).
_BLOCK = 8
SMALLEST = np.float32(np.finfo(np.float32).tiny)  # the smallest normal float32
# The bits of a float32 below which a positive float is subnormal.
_SUBNORMAL_BITS = 1 << 23


def largest_leaf(num_leaves: int) -> np.float32:
    """The largest value an item of a tree of `num_leaves` items holds, so that the total
    cannot overflow float32 however the sums are rounded."""
    return np.float32(np.finfo(np.float32).max / (2 * max(num_leaves, 1)))


def priority_leaves(
    priorities: Float[Array, " k"], exponent: float, num_leaves: int
) -> Float[Array, " k"]:
    """What a tree of `num_leaves` items stores for non-negative finite `priorities`:
    `priorities ** exponent`, with a positive priority's value kept in
    `[SMALLEST, largest_leaf(num_leaves)]` (so a positive priority always stays sampleable,
    and the total finite), and zero for a zero priority, whatever the exponent (as
    Flashbax: an item set to priority 0 is never drawn, also when `exponent` is 0).

    A subnormal priority counts as positive: its logarithm is read from its bits, because
    the CPU treats the subnormal itself as zero.
    """
    bits = lax.bitcast_convert_type(priorities, jnp.int32)
    positive = bits > 0
    subnormal = positive & (bits < _SUBNORMAL_BITS)
    # A subnormal is `bits * 2**-149`.
    log_subnormal = jnp.log(bits.astype(jnp.float32)) - np.float32(149 * np.log(2))
    values = jnp.where(
        subnormal, jnp.exp(np.float32(exponent) * log_subnormal), priorities**exponent
    )
    kept = jnp.clip(values, SMALLEST, largest_leaf(num_leaves))
    return jnp.where(positive, kept, jnp.zeros_like(priorities))


def _level_sizes(num_leaves: int) -> list[int]:
    """The padded size of each level, from the items up to the single top group."""
    sizes = [-(-max(num_leaves, 1) // FANOUT) * FANOUT]
    while sizes[-1] > FANOUT:
        sizes.append(-(-(sizes[-1] // FANOUT) // FANOUT) * FANOUT)
    return sizes


def _offsets(sizes: list[int]) -> list[int]:
    return [sum(sizes[:i]) for i in range(len(sizes))]


@jaxtyped(typechecker=beartype)
class SumTree(Data):
    """Priorities of a fixed number of items, with the sums of their groups.

    **Fields:**

    - `nodes`: the levels, concatenated from the items up. In level 0, entry `i` is the
      priority of item `i`; entry `g` of level `j + 1` is the sum of entries
      `FANOUT * g` to `FANOUT * (g + 1) - 1` of level `j`. The last level is one group of
      `FANOUT`: its sum is the total. Padding entries are zero. (In a sharded buffer's
      state, one tree per device, stacked: `(devices, nodes)`.)
    - `num_leaves`: the number of items (static).
    """

    nodes: Float[Array, "*shards nodes"]
    num_leaves: int = eqx.field(static=True)

    @staticmethod
    def zeros(num_leaves: int) -> "SumTree":
        """A tree of `num_leaves` zero priorities."""
        return SumTree(jnp.zeros(sum(_level_sizes(num_leaves)), jnp.float32), num_leaves)

    @property
    def _sizes(self) -> list[int]:
        return _level_sizes(self.num_leaves)

    def total(self) -> Float[Array, ""]:
        """The sum of all priorities."""
        return jnp.sum(self.nodes[-FANOUT:])

    def get(self, indices: Int[Array, "*shape"]) -> Float[Array, "*shape"]:
        """The priorities of the items `indices`."""
        return self.nodes[indices]

    def set(
        self,
        indices: Int[Array, " k"],
        values: Float[Array, " k"],
        keep: Bool[Array, " k"],
        *,
        duplicates_agree: bool = False,
    ) -> "SumTree":
        """Sets the priority of item `indices[j]` to `values[j]` where `keep[j]`.

        When an item appears more than once among the kept updates, the last one wins, on
        every backend (a scatter with duplicate indices has no defined winner on GPU). With
        `duplicates_agree=True` the caller promises that repeated items carry equal values,
        and that resolution (a sort) is skipped.
        """
        write = keep
        if not duplicates_agree:
            write = keep & _last_occurrence(jnp.where(keep, indices, jnp.iinfo(jnp.int32).max))
        sizes = self._sizes
        offsets = _offsets(sizes)
        past_end = self.nodes.shape[0]  # where dropped writes point
        nodes = self.nodes.at[jnp.where(write, indices, past_end)].set(values, mode="drop")
        group = indices
        for level in range(1, len(sizes)):
            group = group // FANOUT
            below = offsets[level - 1]
            groups = nodes[below : below + sizes[level - 1]].reshape(-1, FANOUT)
            sums = groups.at[group].get(mode="fill", fill_value=0).sum(axis=1)
            # Items of one group write the same recomputed sum: any order is fine.
            target = jnp.where(write, offsets[level] + group, past_end)
            nodes = nodes.at[target].set(sums, mode="drop")
        return SumTree(nodes, self.num_leaves)

    def leaves(self, start: Int[Array, ""], size: int) -> Float[Array, " size"]:
        """The priorities of items `start` to `start + size - 1`."""
        return lax.dynamic_slice_in_dim(self.nodes, start, size)

    def set_leaves(self, start: Int[Array, ""], values: Float[Array, " size"]) -> "SumTree":
        """Sets the priorities of items `start` to `start + size - 1` to `values`, by
        slices: no scatter, no sort. Requires `start + size <= num_leaves` (the caller's
        promise: the slice would be clamped, not checked).

        A run of consecutive items has consecutive ancestors, so every level is updated by
        reading the children of a few consecutive groups and writing their sums back with
        `dynamic_update_slice`, which XLA does in place. Each sum is recomputed from its
        children, as in `set`. Groups beside the run may be recomputed too, harmlessly.
        """
        size = values.shape[0]
        sizes = self._sizes
        offsets = _offsets(sizes)
        nodes = lax.dynamic_update_slice_in_dim(self.nodes, values, start, 0)
        first = start  # of the changed entries of the level below
        for level in range(1, len(sizes)):
            num_groups = sizes[level - 1] // FANOUT
            # Groups spanned by `size` consecutive entries, from one far enough from the end.
            count = min((size - 1) // FANOUT + 2, num_groups)
            first = jnp.minimum(first // FANOUT, num_groups - count)
            children = lax.dynamic_slice_in_dim(
                nodes, offsets[level - 1] + first * FANOUT, count * FANOUT
            )
            sums = children.reshape(count, FANOUT).sum(axis=1)
            nodes = lax.dynamic_update_slice_in_dim(nodes, sums, offsets[level] + first, 0)
            size = count
        return SumTree(nodes, self.num_leaves)

    def sample(
        self, key: PRNGKeyArray, num: int
    ) -> tuple[Int[Array, " num"], Float[Array, " num"]]:
        """Sampling proportional to priority, stratified at the top of the tree: draw `j`
        enters the top-level group in which the `j`-th of `num` equal slices of the total
        falls; below it, each level's child is drawn afresh in proportion to the children's
        sums.

        Why afresh: a float32 draw over the whole total resolves only `total / 2**24`, so in
        a tree of more than `2**24` items (or with items far below the total's scale)
        whole items would never be reached. A draw relative to each group's own sum keeps
        float32's resolution at every level; the probability of an item is still the
        product of its ancestors' shares, its priority over the total.

        A draw never lands on a zero-priority item while the total is positive: at every
        level the descent enters only a child whose sum is positive. A group's children are
        walked in blocks of 8: the descent enters the first positive block whose
        running sum passes the draw, then, inside it, the first positive child whose running
        sum passes what is left of the draw (or, where rounding leaves the draw past the last
        running sum, the last positive block or child).

        **Returns:** the items drawn and their probabilities (priority / total, at least
        the smallest normal float32 for a positive priority; zero when the total is zero).
        """
        total = self.total()
        sizes = self._sizes
        fractions = uniform(key, (len(sizes), num))
        top = (jnp.arange(num) + fractions[0]) / num * total
        top_down = jnp.array(_offsets(sizes)[::-1], jnp.int32)
        numbers = lax.GatherDimensionNumbers(
            offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,)
        )

        def descend(depth: Int[Array, ""], carry: tuple[Array, Array]) -> tuple[Array, Array]:
            # A loop, not unrolled levels: XLA would fuse each level's walk into the next
            # level's gather and redo it for every element gathered.
            u, group = carry
            # Each draw's group of children, one contiguous slice per draw.
            starts = (top_down[depth] + group * FANOUT)[:, None]
            children = lax.gather(
                self.nodes, starts, numbers, (FANOUT,), mode=lax.GatherScatterMode.CLIP
            )
            # Walk the group in two steps, first its blocks of `_BLOCK` children (by their
            # sums), then the chosen block's children: far fewer operations than a walk of
            # all `FANOUT` children, and small enough that XLA runs each on one thread.
            blocks = children.reshape(num, FANOUT // _BLOCK, _BLOCK)
            block, _, before = _walk(blocks.sum(axis=2), u)
            inner = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
            child, chosen, _ = _walk(inner, u - before)
            # The next level's draw, afresh inside the chosen child's sum.
            below = jnp.minimum(depth + 1, len(sizes) - 1)
            return (
                lax.dynamic_index_in_dim(fractions, below, keepdims=False) * chosen,
                group * FANOUT + block * _BLOCK + child,
            )

        _, item = lax.fori_loop(0, len(sizes), descend, (top, jnp.zeros(num, jnp.int32)))
        return item, self.probabilities(item, total)

    def probabilities(
        self, items: Int[Array, "*shape"], total: Float[Array, ""] | None = None
    ) -> Float[Array, "*shape"]:
        """The probabilities `sample` draws `items` with: priority / total, at least the
        smallest normal float32 for a positive priority, zero for a zero one or a zero total
        (`total`, when the caller has it)."""
        total = self.total() if total is None else total
        safe_total = jnp.where(total > 0, total, 1)
        value = self.nodes[items]
        return jnp.where(value > 0, jnp.maximum(value / safe_total, SMALLEST), 0)


def _walk(
    values: Float[Array, "num lanes"], u: Float[Array, " num"]
) -> tuple[Int[Array, " num"], Float[Array, " num"], Float[Array, " num"]]:
    """For each row: the first positive lane whose running sum passes `u`, or the last
    positive lane if none does (lane 0 if none is positive), with its value and the running
    sum before it. Walked left to right, element-wise over the rows (XLA fuses the walk into
    one loop); its results are materialised, so that XLA does not walk again for each use."""
    num = values.shape[0]
    running = jnp.zeros(num, jnp.float32)
    chosen = jnp.zeros(num, jnp.float32)
    before = jnp.zeros(num, jnp.float32)
    lane = jnp.zeros(num, jnp.int32)
    found = jnp.zeros(num, bool)
    for i in range(values.shape[1]):
        value = values[:, i]
        positive = value > 0
        take = ~found & positive
        lane = jnp.where(take, i, lane)
        chosen = jnp.where(take, value, chosen)
        before = jnp.where(take, running, before)
        running = running + value
        found = found | (positive & (running > u))
    return lax.optimization_barrier((lane, chosen, before))


def _last_occurrence(indices: Int[Array, " k"]) -> Bool[Array, " k"]:
    """Whether each entry is the last one with its value: a stable sort keeps equal values
    in their original order, so the last of each run of equal sorted values wins. O(k log k)
    time and O(k) memory, for batches as large as the whole buffer."""
    order = jnp.argsort(indices, stable=True)
    ordered = indices[order]
    last_of_run = jnp.append(ordered[1:] != ordered[:-1], True)
    return jnp.zeros(indices.shape, bool).at[order].set(last_of_run)
