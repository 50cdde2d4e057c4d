"""Episode boundaries: masked windows and n-step returns.

Fills a trajectory buffer from a toy environment whose episodes end at random, samples
windows with `boundary="mask"`, and turns each window into an n-step discounted return that
stops at the window's first episode end and bootstraps from a value estimate only when the
episode goes on past the n rewarded steps. Run with

    python examples/episode_boundaries.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import eqx_replay


envs, n, gamma = 4, 5, 0.9
buffer = eqx_replay.make_trajectory_buffer(
    add_batch_size=envs,
    max_length_time_axis=64,
    sample_batch_size=256,
    sample_sequence_length=n + 1,  # n rewarded steps, then the state to bootstrap from
    period=1,
    min_length_time_axis=n + 1,
    episode_end=lambda step: step["done"],  # True on the last step of an episode
    boundary="mask",
)
# `episode` numbers each environment's episodes; only this example looks at it, to check
# the mask.
example = {
    "obs": jnp.float32(0),
    "reward": jnp.float32(0),
    "done": jnp.bool_(False),
    "episode": jnp.int32(0),
}
state = buffer.init(example)


def value(obs):
    """A stand-in critic: in practice, your value network on the observation."""
    return 2.0 - 0.1 * obs


@jax.jit
def rollout(key, carry):
    """16 steps of every environment. An observation counts the steps since the episode
    began; each step ends the episode with probability 0.2."""

    def step(carry, key):
        obs, episode = carry
        reward_key, done_key = jax.random.split(key)
        reward = jax.random.uniform(reward_key, (envs,))
        done = jax.random.bernoulli(done_key, 0.2, (envs,))
        out = {"obs": obs, "reward": reward, "done": done, "episode": episode}
        return (jnp.where(done, 0.0, obs + 1), episode + done), out

    carry, steps = jax.lax.scan(step, carry, jax.random.split(key, 16))
    return carry, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), steps)  # (envs, 16)


@jax.jit
def n_step_returns(sample):
    """`sum_{j < n} gamma**j r_j` over the steps up to the first episode end, plus
    `gamma**n * value(obs_n)` when no episode ends among the n rewarded steps."""
    experience, mask = sample.experience, sample.mask
    rewards = jnp.where(mask[:, :n], experience["reward"][:, :n], 0.0)
    bootstrap = mask[:, n]  # True: the n rewarded steps are all in the first episode
    tail = jnp.where(bootstrap, gamma**n * value(experience["obs"][:, n]), 0.0)
    return rewards @ gamma ** jnp.arange(n) + tail, bootstrap


key = jax.random.key(0)
carry = (jnp.zeros(envs), jnp.zeros(envs, jnp.int32))
for _ in range(4):
    key, rollout_key = jax.random.split(key)
    carry, batch = rollout(rollout_key, carry)
    state = buffer.add(state, batch)

sample = buffer.sample(state, jax.random.key(1))
returns, bootstrap = n_step_returns(sample)
windows = jax.tree.map(np.asarray, sample.experience)
mask = np.asarray(sample.mask)


def loop_return(window):
    """The same return, one step at a time."""
    total, discount = 0.0, 1.0
    for j in range(n):
        total += discount * window["reward"][j]
        discount *= gamma
        if window["done"][j]:
            return total
    return total + discount * value(window["obs"][n])


for name, i in (
    ("ends inside", int(np.argmin(bootstrap))),
    ("no end before the last step", int(np.argmax(bootstrap))),
):
    print(
        f"window ({name}): done {windows['done'][i].astype(int)}, "
        f"mask {mask[i].astype(int)}, return {float(returns[i]):.3f}"
    )
same_episode = windows["episode"] == windows["episode"][:, :1]
print(f"mask is 'same episode as the first step' in all {len(mask)} windows: ", end="")
print(bool((mask == same_episode).all()))
expected = [loop_return({k: v[i] for k, v in windows.items()}) for i in range(len(mask))]
print(f"n-step returns match a step-by-step loop: {bool(np.allclose(returns, expected))}")
print(f"windows that bootstrap: {int(bootstrap.sum())} of {len(mask)}")
