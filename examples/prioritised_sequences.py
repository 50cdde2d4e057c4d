"""Prioritised sequence replay, R2D2-style.

Fills a prioritised trajectory buffer with random "environment" steps, then runs a few
learning steps: sample windows in proportion to priority, compute per-step TD errors (random
here, from your critic in practice), turn them into one priority per window with R2D2's
`eta * max + (1 - eta) * mean` of absolute TD errors, write them back with
`set_priorities`, and weight the loss with the importance-sampling correction. Run with

    python examples/prioritised_sequences.py
"""

import jax
import jax.numpy as jnp

import eqx_replay


envs, steps_per_row, window = 8, 80, 10
buffer = eqx_replay.make_prioritised_trajectory_buffer(
    add_batch_size=envs,
    max_length_time_axis=steps_per_row,
    sample_batch_size=16,
    sample_sequence_length=window,
    period=window // 2,  # windows overlap by half, as in R2D2
    min_length_time_axis=window,
    priority_exponent=0.9,
)
state = buffer.init({"obs": jnp.zeros(4), "reward": jnp.float32(0)})

key = jax.random.key(0)
for _ in range(steps_per_row // 8):  # fill every row
    key, obs_key, reward_key = jax.random.split(key, 3)
    batch = {
        "obs": jax.random.normal(obs_key, (envs, 8, 4)),
        "reward": jax.random.uniform(reward_key, (envs, 8)),
    }
    state = buffer.add(state, batch)
assert buffer.can_sample(state)


@jax.jit
def learn(state, key, beta):
    sample_key, td_key = jax.random.split(key)
    sample = buffer.sample(state, sample_key)
    # In practice: TD errors of your critic on `sample.experience`, shape (batch, time).
    td_errors = jax.random.normal(td_key, sample.experience["reward"].shape)
    weights = eqx_replay.importance_weights(sample.probabilities, beta)
    loss = jnp.mean(weights[:, None] * td_errors**2)
    eta = 0.9
    priorities = eta * jnp.max(jnp.abs(td_errors), axis=1) + (1 - eta) * jnp.mean(
        jnp.abs(td_errors), axis=1
    )
    return buffer.set_priorities(state, sample.indices, priorities), loss


for step in range(5):
    key, learn_key = jax.random.split(key)
    state, loss = learn(state, learn_key, beta=0.4 + 0.12 * step)
    print(
        f"step {step}: loss {float(loss):.3f}, total priority {float(state.priorities.total()):.2f}"
    )
