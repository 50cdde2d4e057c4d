import contextlib
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


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
