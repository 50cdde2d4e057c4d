"""A million Atari transitions on one small machine: frames stored once.

A DQN on Atari stacks the last 4 preprocessed frames (84x84 grey) into each observation.
Stored as stacks, a 1,000,000-transition replay holds 28 GB of observations; with
`frame_stack`, the buffer stores each step's newest frame once (7 GB) and rebuilds the
stacks when it samples, exactly as the environment gave them.

This example records a real stream from gymnasium's ALE Breakout (several environments,
random actions, `AtariPreprocessing` and `FrameStackObservation(4)`), checking that every
stack the environment gave follows the stacking rule, so that the recording keeps each
step's newest frame only. It then fills a 1,000,000-transition flat buffer by cycling the
recording (each environment's recording ends with an episode end, so the cycle stays a
valid stream), samples from it, compares every rebuilt stack with the environment's, and
prints the buffer's memory against what storing stacks would take.

    pip install -e ".[examples]"
    python examples/atari_frames.py            # under a minute on 2 cores, ~8 GB of RAM
    python examples/atari_frames.py --tiny     # seconds
"""

import argparse
import resource
import sys
import time

import gymnasium as gym
import jax
import numpy as np
from tqdm import tqdm

import eqx_replay


SIZE = 4  # frames per stack


def record(envs: int, steps: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each environment's stream, run for at least `steps` steps and on to the end of an
    episode: its newest frames `(t, 84, 84)` and episode ends `(t,)`. Every stack the
    environment gives is checked against the rule (within an episode, a stack's older
    frames are the previous stack's newer ones; an episode's first stack repeats its first
    frame), so the newest frames keep everything: `stack_index` rebuilds the rest."""
    import ale_py

    gym.register_envs(ale_py)
    recordings = []
    for e in range(envs):
        env = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0)
        env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, noop_max=30)
        env = gym.wrappers.FrameStackObservation(env, SIZE, padding_type="reset")
        env.action_space.seed(seed + e)
        obs, _ = env.reset(seed=seed + e)
        frames, dones, previous = [], [], None
        while True:
            frames.append(obs[-1])
            if previous is None:  # an episode's first stack
                assert all(np.array_equal(f, obs[-1]) for f in obs), "broke the rule"
            else:
                assert np.array_equal(obs[:-1], previous[1:]), "broke the stacking rule"
            previous = obs
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            dones.append(terminated or truncated)
            if dones[-1]:
                if len(dones) >= steps:
                    break
                obs, _ = env.reset()
                previous = None
        env.close()
        recordings.append((np.asarray(frames), np.asarray(dones)))
    return recordings


def stack_index(dones: np.ndarray) -> np.ndarray:
    """For each step of a recording, which recorded frames its environment stack holds,
    `(t, SIZE)`: the last `SIZE` frames, the episode's first repeated before its start
    (`FrameStackObservation(padding_type="reset")`)."""
    t = np.arange(len(dones))
    starts = np.maximum.accumulate(np.where(np.concatenate([[True], dones[:-1]]), t, 0))
    return np.maximum(t[:, None] - (SIZE - 1) + np.arange(SIZE), starts[:, None])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--envs", type=int, default=8, help="environments, one row each")
    parser.add_argument("--record", type=int, default=3000, help="steps per environment")
    parser.add_argument("--add", type=int, default=125, help="steps per row per add")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a small run, for the tests")
    args = parser.parse_args()
    if args.tiny:
        args.transitions, args.envs, args.record, args.add = 4000, 2, 300, 40
    begin = time.perf_counter()

    recordings = record(args.envs, args.record, args.seed)
    recorded = sum(len(d) for _, d in recordings)
    episodes = sum(int(d.sum()) for _, d in recordings)
    print(
        f"recorded {recorded:,} real Breakout steps ({episodes} episodes) from "
        f"{args.envs} environments in {time.perf_counter() - begin:.0f} s"
    )
    # The environment's stacks, rebuilt from the checked recording when needed: holding
    # them all would take SIZE times the recording's memory.
    index = [stack_index(dones) for _, dones in recordings]

    def environment_stacks(e: int, steps: np.ndarray) -> np.ndarray:
        return recordings[e][0][index[e][steps]]

    buffer = eqx_replay.make_flat_buffer(
        max_length=args.transitions,
        min_length=1,
        sample_batch_size=256,
        add_sequences=True,
        add_batch_size=args.envs,
        episode_end=lambda step: step["done"],
        frame_stack=eqx_replay.FrameStack(lambda step: step["obs"], SIZE),
    )
    example = {
        "obs": environment_stacks(0, np.array(0)),
        "action": np.int32(0),
        "done": np.bool_(False),
        "where": np.zeros(2, np.int32),  # (environment, recorded step), for the checks
    }
    state = buffer.init(example)
    rng = np.random.default_rng(args.seed)
    rows = buffer.buffer.max_length_time_axis
    filled = 0
    with tqdm(total=rows * args.envs, desc="filling", unit="transition", unit_scale=True) as bar:
        while filled < rows:
            steps = min(args.add, rows - filled)
            at = [(filled + np.arange(steps)) % len(d) for _, d in recordings]
            batch = {
                "obs": np.stack([environment_stacks(e, i) for e, i in enumerate(at)]),
                "action": rng.integers(0, 4, (args.envs, steps)).astype(np.int32),
                "done": np.stack([d[i] for (_, d), i in zip(recordings, at)]),
                "where": np.stack(
                    [np.stack([np.full(steps, e), i], 1) for e, i in enumerate(at)]
                ).astype(np.int32),
            }
            # Waiting for each add keeps one batch alive at a time: dispatched ahead, the
            # loop would hold every batch not yet written.
            state = jax.block_until_ready(buffer.add(state, batch))
            filled += steps
            bar.update(steps * args.envs)
    jax.block_until_ready(state)

    checked = 0
    for k in range(20):
        pair = buffer.sample(state, jax.random.key(k)).experience
        for step in (pair.first, pair.second):
            where = np.asarray(step["where"])
            want = np.stack([environment_stacks(e, t) for e, t in where])
            assert np.array_equal(np.asarray(step["obs"]), want), "a rebuilt stack differs"
            checked += len(where)
    print(f"sampled stacks equal to the environment's: {checked:,} of {checked:,}")

    stored = sum(x.nbytes for x in jax.tree.leaves(state))
    frames = state.experience["obs"]
    as_stacks = stored - frames.nbytes - state.frame_stack.episode_starts.nbytes
    as_stacks += SIZE * frames.nbytes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak *= 1 if sys.platform == "darwin" else 1024
    print(f"transitions stored: {args.envs * rows:,} ({args.envs} rows of {rows:,})")
    print(f"buffer memory: {stored / 1e9:.2f} GB (stacks stored whole: {as_stacks / 1e9:.2f} GB)")
    print(f"peak resident memory: {peak / 1e9:.2f} GB ({peak / 2**30:.2f} GiB)")
    print(f"total time: {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
