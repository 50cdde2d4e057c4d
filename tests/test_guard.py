"""`_guard`: a buffer that cannot be sampled yet returns poison, under every transform, and
the accelerator's poison is the CPU's."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from .helpers import seed_batch, seed_buffer, seed_example


def assert_poisoned(experience):
    assert bool(jnp.all(jnp.isnan(experience["reward"])))
    assert bool(jnp.all(experience["obs"] == jnp.iinfo(jnp.int32).max))


def test_sampling_before_can_sample_returns_poison_and_state_survives():
    buffer = seed_buffer()
    state = buffer.add(buffer.init(seed_example()), seed_batch())
    assert not buffer.can_sample(state)
    assert_poisoned(buffer.sample(state, jax.random.key(0)).experience)
    state = buffer.add(state, seed_batch())
    sample = buffer.sample(state, jax.random.key(0)).experience
    assert bool(jnp.all(sample["reward"] == 1.0)) and bool(
        jnp.all(sample["obs"] == jnp.array([5, 4]))
    )


@pytest.mark.parametrize("transform", ["jit", "filter_jit", "vmap", "scan"])
def test_poison_under_transforms(transform):
    buffer = seed_buffer()
    empty = buffer.init(seed_example())
    ready = buffer.add(buffer.add(buffer.init(seed_example()), seed_batch()), seed_batch())
    key = jax.random.key(0)
    if transform == "jit":
        samples = [jax.jit(buffer.sample)(s, key).experience for s in (empty, ready)]
    elif transform == "filter_jit":
        samples = [eqx.filter_jit(buffer.sample)(s, key).experience for s in (empty, ready)]
    elif transform == "vmap":
        both = jax.tree.map(lambda a, b: jnp.stack([a, b]), empty, ready)
        out = jax.vmap(buffer.sample)(both, jax.random.split(key)).experience
        samples = [jax.tree.map(lambda x: x[i], out) for i in range(2)]
    else:
        both = jax.tree.map(lambda a, b: jnp.stack([a, b]), empty, ready)
        out = jax.lax.scan(lambda c, s: (c, buffer.sample(s, key).experience), None, both)[1]
        samples = [jax.tree.map(lambda x: x[i], out) for i in range(2)]
    assert_poisoned(samples[0])
    assert bool(jnp.all(samples[1]["reward"] == 1.0))


@pytest.mark.parametrize("ok", [True, False])
def test_the_accelerator_poison_matches_the_cpu_poison(ok):
    from eqx_replay import _guard

    x = {"f": jnp.ones((4, 3)), "i": jnp.arange(4), "b": jnp.zeros(4, bool)}
    looped = jax.jit(_guard.poison_looped)(jnp.array(ok), x)
    selected = jax.jit(_guard.poison_selected)(jnp.array(ok), x)
    for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(selected)):
        assert np.array_equal(a, b, equal_nan=True)
