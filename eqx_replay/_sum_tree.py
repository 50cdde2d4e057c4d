"""A sum tree over non-negative priorities, exact in float32 however long it runs.

The tree is an array `nodes` of size `2 * width` (`width` a power of two): `nodes[1]` is the
root, `nodes[width + i]` is leaf `i`, and every internal node is the float32 sum of its two
children. `set` writes leaves and then recomputes each ancestor from its children, never by
adding a difference, so the tree is always exactly the pairwise sum of its current leaves:
there is no drift to accumulate (Flashbax's tree, updated by differences, drifts until the
root disagrees with its leaves and samples land on zero-priority items).
"""

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._random import uniform


class SumTree(eqx.Module):
    """Priorities of `num_leaves` items, with their sums.

    **Fields:**

    - `nodes`: `nodes[1]` is the total, `nodes[width + i]` the priority of item `i`;
      `nodes[0]` is unused and unused leaves are zero.
    """

    nodes: Float[Array, " nodes"]

    @property
    def width(self) -> int:
        return self.nodes.shape[0] // 2

    @property
    def depth(self) -> int:
        return self.width.bit_length() - 1

    def total(self) -> Float[Array, ""]:
        """The sum of all priorities."""
        return self.nodes[1]

    def get(self, indices: Int[Array, "*shape"]) -> Float[Array, "*shape"]:
        """The priorities of the items `indices`."""
        return self.nodes[self.width + indices]

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
        # Dropped writes point past the end of `nodes`, and stay there at every level.
        past_end = 2 * self.width
        node = jnp.where(write, self.width + indices, past_end)
        nodes = self.nodes.at[node].set(values, mode="drop")

        def level(_: Int[Array, ""], carry: tuple[Array, Array]) -> tuple[Array, Array]:
            nodes, node = carry
            node = jnp.where(write, node // 2, past_end)
            # `nodes[2n]` and `nodes[2n + 1]`, the children of `n`, in one gather.
            children = nodes.reshape(-1, 2).at[node].get(mode="fill", fill_value=0).sum(axis=1)
            # Siblings updated together write the same parent value: any order is fine.
            return nodes.at[node].set(children, mode="drop"), node

        # A loop rather than unrolled levels: on CPU each level is a few tiny kernels, and a
        # loop body runs them without a dispatch each.
        nodes, _ = lax.fori_loop(0, self.depth, level, (nodes, node))
        return SumTree(nodes)

    def sample(
        self, key: PRNGKeyArray, num: int
    ) -> tuple[Int[Array, " num"], Float[Array, " num"]]:
        """Stratified sampling proportional to priority: draw `j` falls in the `j`-th of
        `num` equal slices of the total.

        A draw never lands on a zero-priority item while the total is positive: the descent
        only enters a subtree whose sum is positive.

        **Returns:** the items drawn and their probabilities (priority / total; zero when the
        total is zero).
        """
        total = self.total()
        u = (jnp.arange(num) + uniform(key, (num,))) / num * total
        pairs = self.nodes.reshape(-1, 2)  # row `n`: the children of node `n`

        def level(_: Int[Array, ""], carry: tuple[Array, Array]) -> tuple[Array, Array]:
            u, node = carry
            left, right = pairs[node, 0], pairs[node, 1]
            go_right = ((u >= left) & (right > 0)) | (left <= 0)
            return jnp.where(go_right, u - left, u), 2 * node + go_right.astype(jnp.int32)

        u, node = lax.fori_loop(0, self.depth, level, (u, jnp.ones(num, jnp.int32)))
        items = node - self.width
        probabilities = jnp.where(total > 0, self.nodes[node] / jnp.where(total > 0, total, 1), 0)
        return items, probabilities


def _last_occurrence(indices: Int[Array, " k"]) -> Bool[Array, " k"]:
    """Whether each entry is the last one with its value: a stable sort keeps equal values
    in their original order, so the last of each run of equal sorted values wins. O(k log k)
    time and O(k) memory, for batches as large as the whole buffer."""
    order = jnp.argsort(indices, stable=True)
    ordered = indices[order]
    last_of_run = jnp.append(ordered[1:] != ordered[:-1], True)
    return jnp.zeros(indices.shape, bool).at[order].set(last_of_run)


def empty_sum_tree(num_leaves: int) -> SumTree:
    """A tree of `num_leaves` zero priorities."""
    width = 1 << max(num_leaves - 1, 0).bit_length()
    return SumTree(jnp.zeros(2 * width, jnp.float32))
