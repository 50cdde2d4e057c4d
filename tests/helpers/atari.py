"""Real Atari streams for the frame-stacking tests: gymnasium's ALE environment (the ROMs
ship with ale-py) through `AtariPreprocessing`, a short `TimeLimit` so that many episodes
end, and `FrameStackObservation`."""

import gymnasium as gym
import numpy as np


def atari_env(size: int, padding: str, max_steps: int, game: str = "ALE/Breakout-v5") -> gym.Env:
    """An Atari game giving stacks of `size` 84x84 grey frames, `(size, 84, 84)` uint8,
    padded with the episode's first frame (`padding="first"`, gymnasium's
    `padding_type="reset"`) or zeros (`"zeros"`), whose episodes stop after at most
    `max_steps` agent steps."""
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(game, frameskip=1, repeat_action_probability=0.0)
    env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, noop_max=0, screen_size=84)
    env = gym.wrappers.TimeLimit(env, max_episode_steps=max_steps)
    padding_type = "reset" if padding == "first" else "zero"
    return gym.wrappers.FrameStackObservation(env, size, padding_type=padding_type)


def atari_stream(
    rows: int, steps: int, size: int, padding: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`rows` independent environments run for `steps` steps each with random actions.

    **Returns:** `(obs, done)`: the stacked observation each step was taken from,
    `(rows, steps, size, 84, 84)` uint8, and whether that step ended its episode
    (terminated or truncated), `(rows, steps)`; the step after an end is the first of the
    next episode (the environment was reset).
    """
    obs_out = np.zeros((rows, steps, size, 84, 84), np.uint8)
    done_out = np.zeros((rows, steps), bool)
    for row in range(rows):
        env = atari_env(size, padding, max_steps=5 + 4 * row + seed % 7)
        env.action_space.seed(seed + row)
        obs, _ = env.reset(seed=seed + row)
        for t in range(steps):
            obs_out[row, t] = obs
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done_out[row, t] = terminated or truncated
            if done_out[row, t]:
                obs, _ = env.reset()
        env.close()
    return obs_out, done_out
