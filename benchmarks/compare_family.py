"""Side-by-side benchmark of eqx_replay and Flashbax for the rest of the family: the flat
buffer at DQN shapes, the prioritised flat buffer, the mixer and the trajectory queue.

Run it from the repository root, in an environment with eqx_replay and Flashbax:

    python benchmarks/compare_family.py           # full run: a few minutes, ~8 GB of RAM
    python benchmarks/compare_family.py --tiny    # every size shrunk: well under a minute

It prints a markdown table and writes it to `benchmarks/results/compare_family.md`
(`compare_family_tiny.md` with `--tiny`; `--out DIR` writes elsewhere). Method: as in
`compare_flashbax.py`, with the same timing (`_harness.measure`) and the same rounds and
block lengths: both libraries in one process, on identical configurations and inputs,
alternating timed blocks, medians over rounds.
Flashbax's `add` (and `set_priorities`) is `jax.jit(..., donate_argnums=0)`, its `sample`
`jax.jit(...)`; eqx_replay is called as users call it.

Rows (a transition is `{obs, action: i32, reward: f32, done: bool}`, `obs` `f32[4]` unless
said otherwise):

i. flat buffer: add of 1 transition (no batch axis) and of 128 envs x 1 step, sample of 256
   pairs, at 100K and 1M transitions, and at 100K with Atari's `u8[84, 84, 4]` observations;
j. prioritised flat buffer (exponent 0.6) at 100K: add 1 and 128 x 1, sample 256,
   set_priorities of one sample's 256 indices;
k. mixer of two flat buffers of 100K (128 envs each), proportions 1:1, sample 256;
l. trajectory queue, 16 rows x 1,024 steps, `f32[64]` observations: add of 16 x 8 steps
   when it fits, and the read-and-advance of a sample of 16 x 8 (alternating, so that each
   call can go ahead);
m. trajectory buffer add of 16 rows x 1 step at 16,384 steps whose `reward` is weakly typed
   (`jnp.full(shape, 1.0)`, as a reward computed from a Python float is), both libraries
   given the same batch;
n. trajectory buffer samples where most windows wrap the ring (window length close to the
   time axis): 1,024 windows of 64 steps from a full ring of 16 rows x 80 steps, and 256 of
   64 from 16 x 66, `f32[64]` observations.
"""

import time
import warnings
from typing import Any

import _harness as h
import jax
import jax.numpy as jnp
import jax.random as jr

import eqx_replay


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import flashbax as fbx


def measure(runners: dict[str, Any], timing: h.Timing) -> dict[str, float]:
    return h.measure(runners, timing.rounds, timing.block)


def transition(obs_shape: tuple[int, ...], obs_dtype: Any) -> dict[str, jax.Array]:
    return {
        "obs": jnp.zeros(obs_shape, obs_dtype),
        "action": jnp.int32(0),
        "reward": jnp.float32(0),
        "done": jnp.bool_(False),
    }


def filled_flat(example, envs, capacity):
    """Both libraries' flat buffers of `capacity` transitions added `envs` at a time, their
    states full (filled through trajectory buffers of the same rows, in large chunks)."""
    config: dict[str, Any] = dict(
        max_length=capacity, min_length=256, sample_batch_size=256, add_batch_size=envs
    )
    ours, theirs = eqx_replay.make_flat_buffer(**config), fbx.make_flat_buffer(**config)
    time_axis = capacity // envs
    inner = fbx.make_trajectory_buffer(
        add_batch_size=envs,
        sample_batch_size=1,
        sample_sequence_length=2,
        period=1,
        min_length_time_axis=2,
        max_length_time_axis=time_axis,
    )
    our_state = h.fill(ours.buffer.add, ours.init(example), example, envs, time_axis)
    their_add = jax.jit(inner.add, donate_argnums=0)
    their_state = h.fill(their_add, theirs.init(example), example, envs, time_axis)
    return ours, theirs, our_state, their_state


def flat_rows(results: h.Rows, scale: h.Timing, capacity: int, obs, label: str) -> None:
    h.log(f"[i] flat buffer at {capacity:,}, obs {label}")
    example = transition(*obs)
    adds = {}
    for envs in (None, 128):
        config: dict[str, Any] = dict(max_length=capacity, min_length=256, sample_batch_size=256)
        ours = eqx_replay.make_flat_buffer(**config, add_batch_size=envs)
        theirs = fbx.make_flat_buffer(**config, add_batch_size=envs)
        rows = 1 if envs is None else envs
        batch = h.random_batch(example, rows, 1, seed=3)
        batch = jax.tree.map(lambda x: x[:, 0] if envs is not None else x[0, 0], batch)
        adds[envs] = (ours, theirs, batch)
        runners = {
            "eqx": h.AddRunner(h.looked_up(ours, "add"), ours.init(example), batch),
            "fbx": h.AddRunner(jax.jit(theirs.add, donate_argnums=0), theirs.init(example), batch),
        }
        times = measure(runners, scale)
        del runners
        what = "1 transition" if envs is None else f"{envs}×1"
        results.add(h.Row(f"i. flat add {what} @ {capacity:,} {label}", times["eqx"], times["fbx"]))
    ours, theirs, our_state, their_state = filled_flat(example, 128, capacity)
    runners, _ = sample_runners(ours, our_state, theirs, their_state)
    times = measure(runners, scale)
    results.add(h.Row(f"i. flat sample 256 @ {capacity:,} {label}", times["eqx"], times["fbx"]))


def sample_runners(ours, our_state, theirs, their_state, seed=5):
    keys = list(jr.split(jr.PRNGKey(seed), 1_000))
    out = ours.sample(our_state, keys[0])
    bytes_out = h.tree_bytes(out.experience)
    runners = {
        "eqx": h.SampleRunner(h.looked_up(ours, "sample"), our_state, keys),
        "fbx": h.SampleRunner(jax.jit(theirs.sample), their_state, keys),
    }
    return runners, bytes_out


def prioritised_rows(results: h.Rows, scale: h.Timing, capacity: int) -> None:
    h.log(f"[j] prioritised flat buffer at {capacity:,}")
    example = transition((4,), jnp.float32)
    label = f"j. prioritised flat {{}} @ {capacity:,}"
    for envs in (None, 128):
        config: dict[str, Any] = dict(max_length=capacity, min_length=256, sample_batch_size=256)
        ours = eqx_replay.make_prioritised_flat_buffer(**config, add_batch_size=envs)
        theirs = fbx.make_prioritised_flat_buffer(**config, add_batch_size=envs)
        rows = 1 if envs is None else envs
        batch = h.random_batch(example, rows, 1, seed=3)
        batch = jax.tree.map(lambda x: x[:, 0] if envs is not None else x[0, 0], batch)
        their_add = jax.jit(theirs.add, donate_argnums=0)
        runners = {
            "eqx": h.AddRunner(h.looked_up(ours, "add"), ours.init(example), batch),
            "fbx": h.AddRunner(their_add, theirs.init(example), batch),
        }
        times = measure(runners, scale)
        what = "1 transition" if envs is None else f"{envs}×1"
        results.add(h.Row(label.format(f"add {what}"), times["eqx"], times["fbx"]))
        if envs is None:
            continue
        # Fill both, adding as users do (a prioritised state must be filled by its own add).
        our_state, their_state = runners["eqx"].state, runners["fbx"].state
        del runners
        for _ in range(capacity // envs):
            our_state = ours.add(our_state, batch)
            their_state = their_add(their_state, batch)
        runners, _ = sample_runners(ours, our_state, theirs, their_state)
        times = measure(runners, scale)
        del runners
        results.add(h.Row(label.format("sample 256"), times["eqx"], times["fbx"]))
        our_sample = ours.sample(our_state, jr.PRNGKey(8))
        their_sample = jax.jit(theirs.sample)(their_state, jr.PRNGKey(8))
        priorities = jr.uniform(jr.PRNGKey(9), (256,), minval=0.1, maxval=2.0)
        their_set = jax.jit(theirs.set_priorities, donate_argnums=0)
        runners = {
            "eqx": h.AddRunner(
                lambda s, b, buf=ours: buf.set_priorities(s, *b),
                our_state,
                (our_sample.indices, priorities),
            ),
            "fbx": h.AddRunner(
                lambda s, b: their_set(s, *b), their_state, (their_sample.indices, priorities)
            ),
        }
        del our_state, their_state
        times = measure(runners, scale)
        del runners
        results.add(h.Row(label.format("set_priorities ×256"), times["eqx"], times["fbx"]))


def mixer_rows(results: h.Rows, scale: h.Timing, capacity: int) -> None:
    h.log(f"[k] mixer of two flat buffers of {capacity:,}")
    example = transition((4,), jnp.float32)
    ours, theirs, our_a, their_a = filled_flat(example, 128, capacity)
    _, _, our_b, their_b = filled_flat(example, 128, capacity)
    our_mixer = eqx_replay.make_mixer([ours, ours], 256, [1, 1])
    their_mixer = fbx.make_mixer([theirs, theirs], 256, [1, 1])
    keys = list(jr.split(jr.PRNGKey(11), 1_000))
    runners = {
        "eqx": h.SampleRunner(h.looked_up(our_mixer, "sample"), [our_a, our_b], keys),
        "fbx": h.SampleRunner(jax.jit(their_mixer.sample), [their_a, their_b], keys),
    }
    times = measure(runners, scale)
    results.add(h.Row(f"k. mixer sample 256 of 2 × {capacity:,}", times["eqx"], times["fbx"]))


class QueueRunner:
    """Runs `n` (add, then sample) pairs on the queue; the state is rebound."""

    def __init__(self, add, sample, state, batch):
        self.add, self.sample, self.state, self.batch = add, sample, state, batch
        self.n_cap = 100_000

    def __call__(self, n: int) -> float:
        state, self.state = self.state, None
        add, sample, batch = self.add, self.sample, self.batch
        start = time.perf_counter()
        for _ in range(n):
            state = add(state, batch)
            state, out = sample(state)
        jax.block_until_ready((state, out))  # pyright: ignore[reportPossiblyUnbound] # n >= 1
        elapsed = time.perf_counter() - start
        self.state = state
        return elapsed


def queue_rows(results: h.Rows, scale: h.Timing, capacity: int) -> None:
    h.log(f"[l] trajectory queue, 16 rows x {capacity:,} steps")
    example = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
    config: dict[str, Any] = dict(
        max_length_time_axis=capacity,
        add_batch_size=16,
        add_sequence_length=8,
        sample_sequence_length=8,
    )
    ours, theirs = eqx_replay.make_trajectory_queue(**config), fbx.make_trajectory_queue(**config)
    batch = h.random_batch(example, 16, 8, seed=12)
    runners = {
        "eqx": QueueRunner(
            h.looked_up(ours, "add"), h.looked_up(ours, "sample"), ours.init(example), batch
        ),
        "fbx": QueueRunner(
            jax.jit(theirs.add, donate_argnums=0),
            jax.jit(theirs.sample, donate_argnums=0),
            theirs.init(example),
            batch,
        ),
    }
    times = measure(runners, scale)
    results.add(h.Row("l. queue add 16×8 + sample 16×8", times["eqx"], times["fbx"]))


def weak_add_rows(results: h.Rows, scale: h.Timing) -> None:
    h.log("[m] trajectory add of a batch with a weakly typed leaf")
    example = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
    config: dict[str, Any] = dict(
        add_batch_size=16,
        sample_batch_size=256,
        sample_sequence_length=2,
        period=1,
        min_length_time_axis=2,
        max_length_time_axis=1_024,
    )
    ours, theirs = h.trajectory_buffers(**config)
    batch = h.random_batch(example, 16, 1, seed=13)
    batch["reward"] = jnp.full((16, 1), 1.0)
    assert batch["reward"].weak_type
    runners = {
        "eqx": h.AddRunner(h.looked_up(ours, "add"), ours.init(example), batch),
        "fbx": h.AddRunner(jax.jit(theirs.add, donate_argnums=0), theirs.init(example), batch),
    }
    times = measure(runners, scale)
    results.add(h.Row("m. add 16×1, weakly typed reward", times["eqx"], times["fbx"]))


def wrapping_rows(results: h.Rows, scale: h.Timing) -> None:
    example = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
    for time_axis, samples in ((80, 1_024), (66, 256)):
        h.log(f"[n] sample {samples}×64 from 16 rows × {time_axis} steps")
        config: dict[str, Any] = dict(
            add_batch_size=16,
            sample_batch_size=samples,
            sample_sequence_length=64,
            period=1,
            min_length_time_axis=64,
            max_length_time_axis=time_axis,
        )
        ours, theirs = h.trajectory_buffers(**config)
        # Full, and with the write head mid-ring, so that windows start anywhere.
        batch = h.random_batch(example, 16, time_axis + time_axis // 3, seed=14)
        our_state = ours.add(ours.init(example), jax.tree.map(lambda x: x[:, :time_axis], batch))
        our_state = ours.add(our_state, jax.tree.map(lambda x: x[:, time_axis:], batch))
        their_add = jax.jit(theirs.add, donate_argnums=0)
        their_state = their_add(
            theirs.init(example), jax.tree.map(lambda x: x[:, :time_axis], batch)
        )
        their_state = their_add(their_state, jax.tree.map(lambda x: x[:, time_axis:], batch))
        runners, _ = sample_runners(ours, our_state, theirs, their_state, seed=15)
        times = measure(runners, scale)
        del runners
        label = f"n. sample {samples}×64 of 16 × {time_axis} (most windows wrap)"
        results.add(h.Row(label, times["eqx"], times["fbx"]))


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--only", default="ijklmn", help="the rows to run, e.g. 'jl'")
    args = parser.parse_args()
    scale = h.Timing.of(args.tiny)
    small, large, queue = (2_048, 4_096, 64) if args.tiny else (100_000, 1_000_000, 1_024)
    title = "eqx_replay vs Flashbax: the rest of the family"
    report = h.Report("compare_family", title, args, partial=set(args.only) != set("ijklmn"))
    results = h.Rows()
    if "i" in args.only:
        flat_rows(results, scale, small, ((4,), jnp.float32), "f32[4]")
        flat_rows(results, scale, large, ((4,), jnp.float32), "f32[4]")
        flat_rows(results, scale, small, ((84, 84, 4), jnp.uint8), "u8[84,84,4]")
    if "j" in args.only:
        prioritised_rows(results, scale, small)
    if "k" in args.only:
        mixer_rows(results, scale, small)
    if "l" in args.only:
        queue_rows(results, scale, queue)
    if "m" in args.only:
        weak_add_rows(results, scale)
    if "n" in args.only:
        wrapping_rows(results, scale)
    report.table(h.RATIO_HEADER, h.ratio_cells(results), section="table")
    report.write(
        [
            scale.note() + " Ratio = eqx_replay / Flashbax: below 1 means eqx_replay is faster.",
            "Flashbax: `add` and `set_priorities` = `jax.jit(..., donate_argnums=0)`, "
            "`sample` = `jax.jit(...)`; eqx_replay called as users call it.",
        ]
    )


if __name__ == "__main__":
    main()
