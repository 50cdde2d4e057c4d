"""A flat buffer of transitions in a DQN-style loop, PureJaxRL-style: vectorised
environments, and act-add-sample inside one `jax.jit` / `lax.scan`, vmapped over seeds.

Each step, 8 environments each produce one transition `(obs, action, reward, done)`; the
flat buffer stores them (`add_batch_size=8`, no time axis) and samples pairs of
consecutive transitions of one environment: `first` is `(s, a, r, done)`, `second.obs` is
`s'`. Run with

    python examples/flat_buffer.py
"""

import jax
import jax.numpy as jnp

import eqx_replay


envs, seeds = 8, 3
buffer = eqx_replay.make_flat_buffer(
    max_length=4_096, min_length=64, sample_batch_size=32, add_batch_size=envs
)
example = {
    "obs": jnp.zeros(4),
    "action": jnp.int32(0),
    "reward": jnp.float32(0),
    "done": jnp.bool_(False),
}


def env_step(obs, action, key):
    """A toy environment: the observation drifts by the action; episodes end at random."""
    obs = obs + 0.1 * (action[:, None] - 0.5) + 0.01 * jax.random.normal(key, obs.shape)
    done = jax.random.uniform(key, (obs.shape[0],)) < 0.05
    return jnp.where(done[:, None], 0.0, obs), -jnp.abs(obs[:, 0]), done


def train(key):
    def step(carry, key):
        state, obs = carry
        act_key, env_key, sample_key = jax.random.split(key, 3)
        action = jax.random.randint(act_key, (envs,), 0, 2)  # your policy here
        next_obs, reward, done = env_step(obs, action, env_key)
        transition = {"obs": obs, "action": action, "reward": reward, "done": done}
        state = buffer.add(state, transition)
        sample = buffer.sample(state, sample_key)
        # A TD target: r + gamma * (1 - done) * max_a Q(s', a); here Q is the identity.
        first, second = sample.experience.first, sample.experience.second
        target = first["reward"] + 0.99 * (1 - first["done"]) * second["obs"].max(axis=-1)
        target = jnp.where(buffer.can_sample(state), target, 0.0)
        return (state, next_obs), jnp.mean(target)

    state = buffer.init(example)
    carry = (state, jnp.zeros((envs, 4)))
    (state, _), targets = jax.lax.scan(step, carry, jax.random.split(key, 200))
    return state, targets


states, targets = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), seeds))
print("buffer states per seed:", states.experience["obs"].shape)
print("transitions stored per seed:", int(states.current_index[0]) * envs)
print("mean TD target, last step, per seed:", [round(float(t), 3) for t in targets[:, -1]])
