"""An item buffer: independent items, here (input, label) pairs for a supervised auxiliary
loss, added in batches of sequences and sampled one by one. Run with

    python examples/item_buffer.py
"""

import jax
import jax.numpy as jnp

import eqx_replay


buffer = eqx_replay.make_item_buffer(
    max_length=1_000, min_length=100, sample_batch_size=64, add_batches=True, add_sequences=True
)
state = buffer.init({"x": jnp.zeros(3), "label": jnp.int32(0)})

key = jax.random.key(0)
for i in range(10):
    key, data_key = jax.random.split(key)
    # 4 workers x 25 steps each: 100 items per add, stored one after the other.
    x = jax.random.normal(data_key, (4, 25, 3))
    state = buffer.add(state, {"x": x, "label": (x.sum(-1) > 0).astype(jnp.int32)})

# 1,000 items added to 1,000 slots: the buffer is full and the write head is back at 0.
print("full:", bool(state.is_full), "can sample:", bool(buffer.can_sample(state)))
sample = buffer.sample(state, jax.random.key(1))
print("sample shapes:", {k: v.shape for k, v in sample.experience.items()})
consistent = jnp.all((sample.experience["x"].sum(-1) > 0) == (sample.experience["label"] == 1))
print("labels match their inputs:", bool(consistent))
