"""Quickstart: the trajectory buffer.

Flashbax's trajectory-buffer quickstart, step by step, with `eqx_replay` in place of
`flashbax` (and `jax.tree.map` in place of the removed `jax.tree_map`). Run it with

    python examples/quickstart_trajectory_buffer.py
"""

import chex
import jax
import jax.numpy as jnp


# Fake devices, used with `jax.pmap` at the end.
DEVICE_COUNT_MOCK = 2
chex.set_n_cpu_devices(DEVICE_COUNT_MOCK)

import eqx_replay as fbx  # noqa: E402  (after the device count is set)


# Hyper-parameters of the buffer.
max_length_time_axis = 32  # Maximum length of the buffer along the time axis.
min_length_time_axis = 16  # Minimum length across the time axis before we can sample.
sample_batch_size = 4  # Batch size of trajectories sampled from the buffer.
add_batch_size = 6  # Batch size of trajectories added to the buffer.
sample_sequence_length = 8  # Sequence length of trajectories sampled from the buffer.
add_sequence_length = 10  # Sequence length of trajectories added to the buffer.
period = 1  # Period at which we sample trajectories from the buffer.

# An `eqx.Module` holding the configuration, with `init`, `add`, `can_sample`, `sample`.
buffer = fbx.make_trajectory_buffer(
    max_length_time_axis=max_length_time_axis,
    min_length_time_axis=min_length_time_axis,
    sample_batch_size=sample_batch_size,
    add_batch_size=add_batch_size,
    sample_sequence_length=sample_sequence_length,
    period=period,
)

# Initialise the state from one step of experience: only its structure, shapes and dtypes
# are used.
fake_timestep = {"obs": jnp.array([5, 4]), "reward": jnp.array(1.0)}
state = buffer.init(fake_timestep)

# Fill the buffer above its minimum length. `add` updates the state in place (it donates
# the state passed in), so always rebind `state`; the batch itself is not consumed.
rng_key = jax.random.PRNGKey(0)


def broadcast_fn(x):
    return jnp.broadcast_to(x, (add_batch_size, add_sequence_length, *x.shape))


fake_batch_sequence = jax.tree.map(broadcast_fn, fake_timestep)
state = buffer.add(state, fake_batch_sequence)
assert buffer.can_sample(state) == False  # noqa: E712  After one batch the buffer is not yet full.
state = buffer.add(state, fake_batch_sequence)
assert buffer.can_sample(state)  # Now filled above min_length_time_axis.

# Sample a batch of sequences with the structure of `fake_timestep`.
rng_key = jax.random.PRNGKey(0)
batch = buffer.sample(state, rng_key)
print(batch.experience.keys())  # dict_keys(['obs', 'reward'])
print(batch.experience["reward"].shape)  # (4, 8) = (sample_batch_size, sample_sequence_length)

# The state: `experience` with axes (add_batch_size, max_length_time_axis, ...), the write
# head `current_index`, and `is_full`.
print(state.__dict__.keys())  # dict_keys(['experience', 'current_index', 'is_full'])
print(state.experience.keys())  # dict_keys(['obs', 'reward'])
print(state.experience["obs"].shape)  # (6, 32, 2)

print(batch.experience.keys())  # dict_keys(['obs', 'reward'])
print(batch.experience["reward"].shape)  # (4, 8)

# The buffer works under `jax.pmap`: one independent buffer per device.
states = jax.pmap(buffer.init)(
    jax.tree.map(lambda x: jnp.stack([x] * DEVICE_COUNT_MOCK), fake_timestep)
)
batches = jax.tree.map(lambda x: jnp.stack([x] * DEVICE_COUNT_MOCK), fake_batch_sequence)
states = jax.pmap(buffer.add)(states, batches)
states = jax.pmap(buffer.add)(states, batches)
keys = jax.random.split(rng_key, DEVICE_COUNT_MOCK)
samples = jax.pmap(buffer.sample)(states, keys)
print(samples.experience["obs"].shape)  # (2, 4, 8, 2) = (devices, *batch, *sequence, 2)
