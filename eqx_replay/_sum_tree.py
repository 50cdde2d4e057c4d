"""A sum tree over non-negative priorities, exact in float32 however long it runs.

The tree is an array `nodes` of size `2 * width` (`width` a power of two): `nodes[1]` is the
root, `nodes[width + i]` is leaf `i`, and every internal node is the float32 sum of its two
children. `set` writes leaves and then recomputes each ancestor from its children, never by
adding a difference, so the tree is always exactly the pairwise sum of its current leaves:
there is no drift to accumulate (Flashbax's tree, updated by differences, drifts until the
root disagrees with its leaves and samples land on zero-priority items).
"""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray


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
        self, indices: Int[Array, " k"], values: Float[Array, " k"], keep: Bool[Array, " k"]
    ) -> "SumTree":
        """Sets the priority of item `indices[j]` to `values[j]` where `keep[j]`.

        When an item appears more than once among the kept updates, the last one wins, on
        every backend (a scatter with duplicate indices has no defined winner on GPU).
        """
        k = indices.shape[0]
        order = jnp.arange(k)
        overwritten_later = (
            (indices[:, None] == indices[None, :])
            & keep[None, :]
            & (order[:, None] < order[None, :])
        ).any(axis=1)
        write = keep & ~overwritten_later
        # Dropped writes point past the end of `nodes`, and stay there at every level.
        past_end = 2 * self.width
        node = jnp.where(write, self.width + indices, past_end)
        nodes = self.nodes.at[node].set(values, mode="drop")
        for _ in range(self.depth):
            node = jnp.where(write, node // 2, past_end)
            children = nodes.at[2 * node].get(mode="fill", fill_value=0) + nodes.at[
                2 * node + 1
            ].get(mode="fill", fill_value=0)
            # Siblings updated together write the same parent value: any order is fine.
            nodes = nodes.at[node].set(children, mode="drop")
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
        u = (jnp.arange(num) + jr.uniform(key, (num,))) / num * total
        node = jnp.ones(num, jnp.int32)
        for _ in range(self.depth):
            left, right = self.nodes[2 * node], self.nodes[2 * node + 1]
            go_right = ((u >= left) & (right > 0)) | (left <= 0)
            u = jnp.where(go_right, u - left, u)
            node = 2 * node + go_right.astype(jnp.int32)
        items = node - self.width
        probabilities = jnp.where(total > 0, self.nodes[node] / jnp.where(total > 0, total, 1), 0)
        return items, probabilities


def empty_sum_tree(num_leaves: int) -> SumTree:
    """A tree of `num_leaves` zero priorities."""
    width = 1 << max(num_leaves - 1, 0).bit_length()
    return SumTree(jnp.zeros(2 * width, jnp.float32))
