"""Where a `sample` spends its time: computing it, or waiting for memory.

For a full buffer of 16 rows x 10,240 steps of `{obs: f32[64], reward: f32, done: bool}`
(42 MB of observations, more than this machine's caches), times, alternating in one process
(median per call of 15 rounds; only the latest output is kept alive, as in training):

- `eqx_replay` `sample` and Flashbax's `jax.jit(sample)`, with **fresh windows**: a new key
  every call, so every window is read from main memory, as in training (this is what row c
  of `compare_flashbax.py` measures);
- the same, with **cached windows**: the same key every call, so the same windows, already
  in the CPU caches after the first call: what is left is the computation;
- reading the windows alone, their indices given (from a cheap hash of the key), with
  fresh and with cached windows: as a plain gather of `(S, L)` steps (`x[rows, times]`), and
  as eqx_replay reads them (`_ring.read`: one contiguous block per window).

The difference between the two columns of one library is the time spent waiting for memory:
reading `S` windows of `L` steps from random places of a large ring. Both libraries read the
same number of bytes from the same kind of places; no layout of the output changes that.

Run with `python benchmarks/sample_profile.py [--tiny]`; it writes the table to
`benchmarks/results/sample_profile.md` (`sample_profile_tiny.md` with `--tiny`; `--out DIR`
writes elsewhere).
"""

import warnings
from typing import Any

import _harness as h
import flashbax as fbx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import eqx_replay
from eqx_replay import _ring


def main():
    args = h.parser(__doc__).parse_args()
    rows, steps, calls, rounds = (4, 256, 5, 2) if args.tiny else (16, 10_240, 300, 15)
    example = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
    rng = np.random.default_rng(0)
    batch = {
        "obs": jnp.asarray(rng.standard_normal((rows, steps, 64), np.float32)),
        "reward": jnp.asarray(rng.standard_normal((rows, steps), np.float32)),
        "done": jnp.asarray(rng.uniform(size=(rows, steps)) < 0.01),
    }
    report = h.Report("sample_profile", "Where a `sample` spends its time", args)
    header = [
        "sample S x L",
        "eqx_replay fresh",
        "flashbax fresh",
        "ratio",
        "eqx_replay cached",
        "flashbax cached",
        "ratio",
        "gather alone fresh",
        "gather alone cached",
        "blocks alone fresh",
        "blocks alone cached",
    ]
    table = []
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
        state = ours.add(ours.init(example), batch)
        fstate = jax.jit(theirs.add)(theirs.init(example), batch)

        def windows(key):
            # The windows' indices come from the key (a cheap hash, not a random draw).
            i = jr.key_data(key)[..., -1].astype(jnp.int32) * 7919 + jnp.arange(samples) * 131
            return i % rows, i % (steps - length)

        @jax.jit
        def gather(experience, key):
            row, start = windows(key)
            times = start[:, None] + jnp.arange(length)
            return jax.tree.map(lambda x: x[row[:, None], times], experience)

        @jax.jit
        def blocks(experience, key):
            row, start = windows(key)
            return _ring.read(experience, row, start, length)

        fresh = list(jr.split(jr.key(1), calls))
        cached = [fresh[0]] * calls
        contenders = {
            "eqx_replay fresh": (ours.sample, state, fresh),
            "flashbax fresh": (jax.jit(theirs.sample), fstate, fresh),
            "eqx_replay cached": (ours.sample, state, cached),
            "flashbax cached": (jax.jit(theirs.sample), fstate, cached),
            "gather fresh": (gather, state.experience, fresh),
            "gather cached": (gather, state.experience, cached),
            "blocks fresh": (blocks, state.experience, fresh),
            "blocks cached": (blocks, state.experience, cached),
        }
        runners = {name: h.SampleRunner(*contender) for name, contender in contenders.items()}
        for runner in runners.values():
            runner(2)  # compile
        # In the same order every round, with no warm-up call between rounds.
        seconds = h.alternate(runners, calls, rounds, warmup=0, reverse=False)
        t = {name: value * 1e6 for name, value in seconds.items()}
        cells = [
            f"{t['eqx_replay fresh']:.1f} µs",
            f"{t['flashbax fresh']:.1f} µs",
            f"{t['eqx_replay fresh'] / t['flashbax fresh']:.2f}",
            f"{t['eqx_replay cached']:.1f} µs",
            f"{t['flashbax cached']:.1f} µs",
            f"{t['eqx_replay cached'] / t['flashbax cached']:.2f}",
            f"{t['gather fresh']:.1f} µs",
            f"{t['gather cached']:.1f} µs",
            f"{t['blocks fresh']:.1f} µs",
            f"{t['blocks cached']:.1f} µs",
        ]
        table.append([f"{samples} x {length}", *cells])
    report.table(header, table, section="table")
    report.write(
        [
            f"Timing: median over {rounds} rounds of {calls} calls per contender, in the same "
            f"order every round, after two warm-up calls each; {rows} rows x {steps} steps."
        ]
    )


if __name__ == "__main__":
    main()
