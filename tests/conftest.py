import jax
import pytest

from .helpers import seed_batch, seed_buffer, seed_example


# Two fake CPU devices for the `jax.pmap` tests; must be set before JAX starts its backend.
jax.config.update("jax_num_cpu_devices", 2)


@pytest.fixture
def filled():
    buffer = seed_buffer()
    state = buffer.add(buffer.init(seed_example()), seed_batch())
    return buffer, state
