"""A prioritised item buffer: items drawn in proportion to a score, e.g. the loss of a model
on them (prioritised sampling of training examples). Items that the model gets right are
drawn less and less often. Run with

    python examples/prioritised_item_buffer.py
"""

import jax
import jax.numpy as jnp

import eqx_replay


buffer = eqx_replay.make_prioritised_item_buffer(
    max_length=256, min_length=256, sample_batch_size=32, add_batches=True, priority_exponent=1.0
)
x = jnp.linspace(-1, 1, 256)
state = buffer.init({"x": jnp.float32(0), "y": jnp.float32(0)})
state = buffer.add(state, {"x": x, "y": jnp.sin(3 * x)})


@jax.jit
def score(state, key):
    sample = buffer.sample(state, key)
    loss = (sample.experience["y"] - sample.experience["x"]) ** 2  # a model y = x
    return buffer.set_priorities(state, sample.indices, loss), sample.experience["x"]


key = jax.random.key(0)
for _ in range(200):  # score every item a few times
    key, sample_key = jax.random.split(key)
    state, _ = score(state, sample_key)
_, drawn = score(state, jax.random.key(1))
print("mean |x| of items drawn:", round(float(jnp.abs(drawn).mean()), 3))
print(
    "the model y = x is worst where |x| is large: drawn more than uniform (0.5):",
    bool(jnp.abs(drawn).mean() > 0.5),
)
