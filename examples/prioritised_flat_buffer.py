"""Prioritised experience replay of transitions (Schaul et al., 2016), as in PER-DQN: sample
in proportion to priority, weight the loss with importance weights, and set each sampled
transition's priority to its absolute TD error. Run with

    python examples/prioritised_flat_buffer.py
"""

import jax
import jax.numpy as jnp

import eqx_replay


buffer = eqx_replay.make_prioritised_flat_buffer(
    max_length=10_000,
    min_length=100,
    sample_batch_size=64,
    add_batch_size=16,
    priority_exponent=0.6,
)
state = buffer.init({"obs": jnp.zeros(4), "reward": jnp.float32(0)})
key = jax.random.key(0)
for _ in range(50):
    key, obs_key, reward_key = jax.random.split(key, 3)
    state = buffer.add(
        state,
        {
            "obs": jax.random.normal(obs_key, (16, 4)),
            "reward": jax.random.uniform(reward_key, (16,)),
        },
    )


@jax.jit
def learn(state, key, beta):
    sample = buffer.sample(state, key)
    first, second = sample.experience.first, sample.experience.second
    # A TD error with a toy value function V(s) = sum(s): r + gamma V(s') - V(s).
    td_error = first["reward"] + 0.99 * second["obs"].sum(-1) - first["obs"].sum(-1)
    weights = eqx_replay.importance_weights(sample.probabilities, beta)
    loss = jnp.mean(weights * td_error**2)
    return buffer.set_priorities(state, sample.indices, jnp.abs(td_error)), loss


for step in range(5):
    key, learn_key = jax.random.split(key)
    state, loss = learn(state, learn_key, 0.4 + 0.15 * step)
    priority = float(state.max_priority)
    print(f"step {step}: weighted loss {float(loss):.3f}, max priority {priority:.3f}")
