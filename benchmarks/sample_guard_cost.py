"""Per-call cost of the guard that makes `sample` raise when `can_sample` is false.

Times `TrajectoryBuffer.sample` as shipped (with its `eqx.error_if` guard) against the same
method traced with the guard replaced by the identity, alternating the two in one process.
Run with

    python benchmarks/sample_guard_cost.py [--tiny]
"""

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

import eqx_replay
import eqx_replay._trajectory as trajectory


def per_call_us(sample, state, key, calls):
    out = sample(state, key)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(calls):
        out = sample(state, key)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a quick run that only checks it works")
    args = parser.parse_args()
    calls, rounds = (20, 3) if args.tiny else (2000, 15)
    print("| sample (S x L, obs 64 f32) | with guard (us) | without (us) | guard cost (us) |")
    print("|---|---|---|---|")
    for samples, length in [(4, 8), (256, 16)]:
        config = dict(
            add_batch_size=16,
            sample_batch_size=samples,
            sample_sequence_length=length,
            period=1,
            min_length_time_axis=length,
            max_length_time_axis=1024,
        )
        guarded = eqx_replay.make_trajectory_buffer(**config)
        # A buffer that compares unequal, so that its `sample` is traced anew without the guard.
        unguarded = eqx_replay.make_trajectory_buffer(**config, donate_state=False)
        state = guarded.init({"obs": jnp.zeros(64, jnp.float32)})
        state = guarded.add(state, {"obs": jnp.ones((16, 1024, 64), jnp.float32)})
        key = jax.random.key(0)
        guarded.sample(state, key)
        original = trajectory.eqx.error_if
        trajectory.eqx.error_if = lambda x, pred, msg: x  # pyright: ignore[reportAttributeAccessIssue] # benchmark only
        try:
            unguarded.sample(state, key)
        finally:
            trajectory.eqx.error_if = original
        with_guard, without = [], []
        for _ in range(rounds):
            with_guard.append(per_call_us(guarded.sample, state, key, calls))
            without.append(per_call_us(unguarded.sample, state, key, calls))
        a, b = statistics.median(with_guard), statistics.median(without)
        print(f"| {samples} x {length} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    assert eqx.error_if is original


if __name__ == "__main__":
    main()
