"""Where a `sample` spends its time, next to the gather it cannot avoid.

For a full buffer of 16 rows x 10,240 steps of `{obs: f32[64], reward: f32, done: bool}`,
times, alternating in one process (median per call, each call blocked on):

- `eqx_replay` `sample` and Flashbax's `jax.jit(sample)`;
- the gather alone: XLA's gather of the same windows (indices fixed), per leaf, as both
  libraries compile it;
- the same windows read as contiguous `dynamic_slice`s (the best-case layout for a gather);
- an elementwise copy of the same number of output bytes (what a memcpy-speed gather costs).

Run with `python benchmarks/sample_profile.py [--tiny]`.
"""

import argparse
import statistics
import time
import warnings
from typing import Any

import flashbax as fbx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr

import eqx_replay


def per_call_us(fn, args, calls):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a quick run that checks it works")
    args = parser.parse_args()
    rows, steps, calls, rounds = (4, 256, 5, 2) if args.tiny else (16, 10_240, 200, 15)
    example = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
    print("| sample S x L | eqx_replay | flashbax | gather alone | contiguous slices | copy |")
    print("|---|---:|---:|---:|---:|---:|")
    for samples, length in [(256, 16), (32, 80)]:
        config: dict[str, Any] = dict(
            add_batch_size=rows,
            sample_batch_size=samples,
            sample_sequence_length=length,
            period=1,
            min_length_time_axis=length,
            max_length_time_axis=steps,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours, theirs = (
                eqx_replay.make_trajectory_buffer(**config),
                fbx.make_trajectory_buffer(**config),
            )
        batch = jax.tree.map(lambda x: jnp.ones((rows, steps, *x.shape), x.dtype), example)
        state = ours.add(ours.init(example), batch)
        fstate = jax.jit(theirs.add)(theirs.init(example), batch)
        key = jr.PRNGKey(0)
        row = jr.randint(jr.key(1), (samples,), 0, rows)
        start = jr.randint(jr.key(2), (samples,), 0, steps - length)

        @jax.jit
        def gather(experience, row, start):
            times = start[:, None] + jnp.arange(length)
            return jax.tree.map(lambda x: x[row[:, None], times], experience)

        @jax.jit
        def slices(experience, row, start):
            def window(x, r, s):
                sizes = (1, length, *x.shape[2:])
                return lax.dynamic_slice(x, (r, s) + (0,) * (x.ndim - 2), sizes)[0]

            return jax.tree.map(
                lambda x: jax.vmap(lambda r, s: window(x, r, s))(row, start), experience
            )

        out = gather(state.experience, row, start)

        @jax.jit
        def copy(out):
            return jax.tree.map(lambda x: x + jnp.ones((), x.dtype), out)

        contenders = {
            "eqx_replay": (ours.sample, (state, key)),
            "flashbax": (jax.jit(theirs.sample), (fstate, key)),
            "gather alone": (gather, (state.experience, row, start)),
            "contiguous slices": (slices, (state.experience, row, start)),
            "copy": (copy, (out,)),
        }
        times = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, (fn, fn_args) in contenders.items():
                times[name].append(per_call_us(fn, fn_args, calls))
        cells = " | ".join(f"{statistics.median(t):.1f} µs" for t in times.values())
        print(f"| {samples} x {length} | {cells} |")


if __name__ == "__main__":
    main()
