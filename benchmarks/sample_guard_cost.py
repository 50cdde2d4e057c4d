"""Per-call cost of what `sample` does when `can_sample` is false.

`sample` poisons its output (NaN / largest integer / True) when the buffer cannot be sampled
yet; see `eqx_replay/_guard.py`. This times, alternating in one process, `sample` as shipped,
`sample` with no guard at all, and `sample` guarded by `eqx.error_if` instead (the
alternative we rejected), and prints a markdown table. Run with

    python benchmarks/sample_guard_cost.py [--tiny]
"""

import argparse
import statistics
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

import eqx_replay
import eqx_replay._trajectory as trajectory


VARIANTS = {
    "poison (shipped)": trajectory.poison_sample,
    "no guard": lambda ok, x: x,
    "eqx.error_if": lambda ok, x: eqx.error_if(x, ~ok, "cannot be sampled yet"),
}


def per_call_us(sample, state, key, calls):
    out = sample(state, key)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(calls):
        out = sample(state, key)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls * 1e6


def compile_variant(config, guard, state, key):
    """A `sample` traced with `guard` in place of the shipped poison."""
    # Forget compiled samples shared between equal buffers, so that this one is traced anew.
    vars(eqx_replay.TrajectoryBuffer)["sample"]._shared.clear()
    buffer = eqx_replay.make_trajectory_buffer(**config)
    shipped = trajectory.poison_sample
    trajectory.poison_sample = guard
    try:
        buffer.sample(state, key)
    finally:
        trajectory.poison_sample = shipped
    return buffer.sample


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a quick run that checks it works")
    args = parser.parse_args()
    calls, rounds, capacity = (20, 3, 64) if args.tiny else (1000, 15, 10240)
    print(
        "| sample (S x L) of {obs: f32[64], reward: f32, done: bool}, 16 x "
        f"{capacity} steps | " + " | ".join(f"{name} (us)" for name in VARIANTS) + " |"
    )
    print("|---" * (len(VARIANTS) + 1) + "|")
    example = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
    for samples, length in [(4, 8), (256, 16), (32, 80)]:
        length = min(length, capacity)
        config: dict[str, Any] = dict(
            add_batch_size=16,
            sample_batch_size=samples,
            sample_sequence_length=length,
            period=1,
            min_length_time_axis=length,
            max_length_time_axis=capacity,
        )
        buffer = eqx_replay.make_trajectory_buffer(**config)
        batch = jax.tree.map(lambda x: jnp.ones((16, capacity, *x.shape), x.dtype), example)
        state = buffer.add(buffer.init(example), batch)
        key = jax.random.key(0)
        compiled = {
            name: compile_variant(config, guard, state, key) for name, guard in VARIANTS.items()
        }
        times = {name: [] for name in VARIANTS}
        for _ in range(rounds):
            for name, sample in compiled.items():
                times[name].append(per_call_us(sample, state, key, calls))
        row = " | ".join(f"{statistics.median(t):.1f}" for t in times.values())
        print(f"| {samples} x {length} | {row} |")


if __name__ == "__main__":
    main()
