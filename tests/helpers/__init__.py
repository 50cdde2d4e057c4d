"""What many test files share: comparisons of trees, a small trajectory buffer and its
batches (`seed_*`), the check of a sum tree's sums."""

import contextlib
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqx_replay
import eqx_replay._sum_tree as sum_tree


def tree_allclose(x, y) -> bool:
    return bool(eqx.tree_equal(x, y, rtol=0, atol=0))


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


@contextlib.contextmanager
def quiet():
    """Ignore the configuration warnings that tests of other behaviour do not look at."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def seed_example():
    return {"obs": jnp.array([5, 4]), "reward": jnp.array(1.0)}


def seed_buffer(**overrides):
    config: dict[str, Any] = dict(
        add_batch_size=6,
        sample_batch_size=4,
        sample_sequence_length=8,
        period=1,
        min_length_time_axis=16,
        max_length_time_axis=32,
    )
    config.update(overrides)
    return eqx_replay.make_trajectory_buffer(**config)


def seed_batch(steps=10, rows=6):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (rows, steps, *x.shape)), seed_example())


def check_tree(tree):
    """Every group sum is the float32 sum of its children, recomputed, not accumulated."""
    nodes, start = np.asarray(tree.nodes), 0
    sizes = sum_tree._level_sizes(tree.num_leaves)
    for below, above in zip(sizes, sizes[1:]):
        children = nodes[start : start + below].reshape(-1, sum_tree.FANOUT)
        sums = nodes[start + below : start + below + above]
        np.testing.assert_allclose(sums[: len(children)], children.sum(axis=1), rtol=1e-6)
        assert (sums[len(children) :] == 0).all() and (children.sum(axis=1) > 0).tolist() == (
            sums[: len(children)] > 0
        ).tolist()
        start += below
