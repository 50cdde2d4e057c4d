"""Cost of episode boundaries: `add` and `sample` with `boundary="mask"` and `"strict"`
next to `"ignore"`, at two capacities, to show that neither grows with the capacity.

Trajectory buffer, 16 rows, `{obs: f32[64], reward: f32, done: bool}`, add 16 × 1 steps,
sample 256 × 16, full buffers (episode ends with probability 0.05 per step); medians of
alternating rounds in one process. Run with

    python benchmarks/episode_modes.py [--tiny]
"""

import argparse
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import eqx_replay


MODES = ("ignore", "mask", "strict")


def per_call_us(fn, calls):
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)  # pyright: ignore[reportPossiblyUnboundVariable]
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a quick run that checks it works")
    args = parser.parse_args()
    rows = 16
    capacities, calls, rounds = (
        ([256, 2560], 5, 2) if args.tiny else ([16_384, 1_638_400], 1000, 15)
    )
    example = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
    rng = np.random.default_rng(0)
    print("| capacity (steps) | mode | add 16×1 (µs) | sample 256×16 (µs) |")
    print("|---:|---|---:|---:|")
    for capacity in capacities:
        time_axis = capacity // rows
        fill = {
            "obs": jnp.asarray(rng.normal(size=(rows, time_axis, 64)), jnp.float32),
            "reward": jnp.zeros((rows, time_axis)),
            "done": jnp.asarray(rng.random((rows, time_axis)) < 0.05),
        }
        step = jax.tree.map(lambda x: x[:, :1], fill)
        runs: dict[str, Any] = {}
        for mode in MODES:
            buffer = eqx_replay.make_trajectory_buffer(
                add_batch_size=rows,
                sample_batch_size=256,
                sample_sequence_length=16,
                period=1,
                min_length_time_axis=16,
                max_length_time_axis=time_axis,
                episode_end=lambda s: s["done"],
                boundary=mode,
            )
            state = buffer.add(buffer.init(example), fill)
            runs[mode] = [buffer, state]
        times: dict[str, dict[str, list[float]]] = {m: {"add": [], "sample": []} for m in MODES}
        key = jr.PRNGKey(0)
        for _ in range(rounds):
            for mode in MODES:
                buffer = runs[mode][0]

                def add(mode=mode, buffer=buffer):
                    runs[mode][1] = buffer.add(runs[mode][1], step)
                    return runs[mode][1]

                times[mode]["add"].append(per_call_us(add, calls))
                sample = buffer.sample
                state = runs[mode][1]
                times[mode]["sample"].append(per_call_us(lambda: sample(state, key), calls))
        for mode in MODES:
            add_us = statistics.median(times[mode]["add"])
            sample_us = statistics.median(times[mode]["sample"])
            print(f"| {capacity:,} | {mode} | {add_us:.1f} | {sample_us:.1f} |", flush=True)


if __name__ == "__main__":
    main()
