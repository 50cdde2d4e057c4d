"""Frames stored once: memory and speed of `frame_stack` against the same buffer storing
whole stacks.

Atari-shaped transitions: `{obs: u8[4, 84, 84], action: i32, reward: f32, done: bool}`,
observations stacked by 4 (`FrameStack(lambda s: s["obs"], 4)`), episodes ending with
probability 0.01 per step. Rows of the tables:

- memory: the bytes of the state of a 100K-transition flat buffer, against 1/4 of its
  stacked observations plus its other leaves (target <= 1.05), and against the same buffer
  storing stacks;
- peak resident memory of a fresh process that creates a 1,000,000-transition flat buffer
  with `frame_stack` and fills it (target <= 8 GB);
- speed at 100K transitions (where both fit): `add` of 128 rows x 1 step and of 8 x 1, and
  `sample` of 256 pairs, for the uniform and the prioritised flat buffers (targets: add
  <= 0.5x, sample <= 1.0x), timed side by side in one process, in alternation. For the
  adds, the floor: the same buffer storing bare `u8[84, 84]` frames with no stacks (no
  episode starts, no stacks to rebuild), against the stacks stored: what a frame-stacked
  add cannot go below, since every add pays the call and, when prioritised, the sum
  tree's bookkeeping, whatever the frames weigh.

    python benchmarks/frame_stack.py [--tiny]

It writes `benchmarks/results/frame_stack.md` (`frame_stack_tiny.md` with `--tiny`).
"""

import resource
import sys
from typing import Any

import _harness as h
import jax
import jax.numpy as jnp
import numpy as np

import eqx_replay


SIZE = 4
EXAMPLE = {
    "obs": np.zeros((SIZE, 84, 84), np.uint8),
    "action": np.int32(0),
    "reward": np.float32(0),
    "done": np.bool_(False),
}


def make(kind: str, transitions: int, rows: int, stacked: bool) -> eqx_replay.FlatBuffer:
    settings: dict[str, Any] = dict(
        max_length=transitions,
        min_length=1,
        sample_batch_size=256,
        add_sequences=True,
        add_batch_size=rows,
        episode_end=lambda step: step["done"],
        frame_stack=eqx_replay.FrameStack(lambda step: step["obs"], SIZE) if stacked else None,
    )
    if kind == "prioritised":
        return eqx_replay.make_prioritised_flat_buffer(**settings)  # type: ignore[return-value]
    return eqx_replay.make_flat_buffer(**settings)


def stream(rows: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """`steps` steps of `rows` rows that follow the stacking rule (`padding="first"`)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (rows, steps, 84, 84), dtype=np.uint8)
    done = rng.random((rows, steps)) < 0.01
    t = np.arange(steps)
    obs = np.empty((rows, steps, SIZE, 84, 84), np.uint8)
    for r in range(rows):
        starts = np.maximum.accumulate(np.where(np.concatenate([[True], done[r, :-1]]), t, 0))
        index = np.maximum(t[:, None] - (SIZE - 1) + np.arange(SIZE), starts[:, None])
        obs[r] = frames[r][index]
    return {
        "obs": obs,
        "action": rng.integers(0, 4, (rows, steps)).astype(np.int32),
        "reward": rng.standard_normal((rows, steps)).astype(np.float32),
        "done": done,
    }


def filled(buffer: Any, rows: int, chunk: dict, example: dict | None = None) -> object:
    """A full state: the chunk added over and over (it ends with an episode end, so the
    stream stays valid)."""
    if example is not None:
        example = jax.tree.map(lambda x: x[0, 0], example)
    state = buffer.init(EXAMPLE if example is None else example)
    steps = chunk["done"].shape[1]
    capacity = buffer.buffer.max_length_time_axis
    batch = jax.tree.map(jnp.asarray, chunk)
    for _ in range(-(-capacity // steps)):
        state = jax.block_until_ready(buffer.add(state, batch))  # one batch alive at a time
    return state


def peak_worker(transitions: int) -> None:
    """Creates and fills a frame-stacked flat buffer of `transitions`; emits the peak
    resident memory (bytes) and the state's bytes."""
    rows = 8
    buffer = make("uniform", transitions, rows, stacked=True)
    chunk = stream(rows, 64, seed=1)
    chunk["done"][:, -1] = True
    state = filled(buffer, rows, chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak *= 1 if sys.platform == "darwin" else 1024
    h.emit({"peak": peak, "state": h.tree_bytes(state)})


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--peak-worker", type=int, help=argparse_hidden())
    args = parser.parse_args()
    if args.peak_worker:
        peak_worker(args.peak_worker)
        return
    transitions, big = (4_096, 20_000) if args.tiny else (100_000, 1_000_000)
    steps = 8 if args.tiny else 32  # per row, in the chunks that fill the buffers
    timing = h.Timing.of(args.tiny)
    report = h.Report("frame_stack", "Frames stored once", args)

    # Memory.
    rows = 128
    chunk = stream(rows, steps, seed=0)
    chunk["done"][:, -1] = True
    cells = []
    states = {}
    for stacked in (True, False):
        buffer = make("uniform", transitions, rows, stacked)
        states[stacked] = filled(buffer, rows, chunk)
    stacked_state, whole_state = states[True], states[False]
    stacked_obs = whole_state.experience["obs"].nbytes
    others = h.tree_bytes(whole_state) - stacked_obs
    bound = stacked_obs / SIZE + others
    used = h.tree_bytes(stacked_state)
    cells.append(
        [
            f"state of a {transitions:,}-transition flat buffer",
            h.fmt_bytes(used),
            h.fmt_bytes(bound),
            f"{used / bound:.3f}×",
            h.fmt_bytes(h.tree_bytes(whole_state)),
        ]
    )
    del states, stacked_state, whole_state
    peak = h.run_self("--peak-worker", str(big), *(["--tiny"] if args.tiny else []))
    cells.append(
        [
            f"peak resident memory, creating and filling {big:,} transitions",
            h.fmt_bytes(peak["peak"]),
            "8 GB" if not args.tiny else "-",
            "-",
            f"(state {h.fmt_bytes(peak['state'])})",
        ]
    )
    header = ["with frame_stack", "bytes", "1/4 of stacks + other leaves", "ratio", "stacks stored"]
    report.add("## Memory", "")
    report.table(header, cells, align="lrrrr", section="memory")

    # Speed, at `transitions`.
    speed = h.Rows()
    floors: dict[str, float] = {}
    for kind in ("uniform", "prioritised"):
        for add_rows in (128, 8):
            chunk = stream(add_rows, steps, seed=2)
            chunk["done"][:, -1] = True
            step = jax.tree.map(lambda x: jnp.asarray(x[:, :1]), chunk)
            states, buffers = {}, {}
            for stacked in (True, False):
                buffers[stacked] = make(kind, transitions, add_rows, stacked)
                states[stacked] = filled(buffers[stacked], add_rows, chunk)
            # The floor: the same buffer storing bare frames, no stacks and no bookkeeping.
            frames_only = jax.tree.map(lambda x: x, chunk)
            frames_only["obs"] = chunk["obs"][:, :, -1]
            floor = make(kind, transitions, add_rows, stacked=False)
            floor_state = filled(floor, add_rows, frames_only, example=frames_only)
            if add_rows == 128:  # sampled first: the adds below donate the states
                keys = list(jax.random.split(jax.random.key(0), 64))
                samplers = {
                    name: h.SampleRunner(buffers[stacked].sample, states[stacked], keys)
                    for name, stacked in (("stacked", True), ("whole", False))
                }
                times = h.measure(samplers, timing.rounds, timing.block)
                sample_row = h.Row(f"{kind} sample 256", times["stacked"], times["whole"])
                del samplers
            runners = {
                name: h.AddRunner(buffers[stacked].add, states.pop(stacked), step)
                for name, stacked in (("stacked", True), ("whole", False))
            }
            floor_step = jax.tree.map(lambda x: jnp.asarray(x[:, :1]), frames_only)
            runners["floor"] = h.AddRunner(floor.add, floor_state, floor_step)
            times = h.measure(runners, timing.rounds, timing.block)
            speed.add(h.Row(f"{kind} add {add_rows}×1", times["stacked"], times["whole"]))
            floors[f"{kind} add {add_rows}×1"] = times["floor"]
            if add_rows == 128:
                speed.add(sample_row)  # pyright: ignore[reportPossiblyUnbound]
            del runners
    report.add("", f"## Speed at {transitions:,} transitions", "")
    cells = [
        [
            row.label,
            h.fmt_time(row.eqx),
            h.fmt_time(row.fbx),
            h.fmt_ratio(row.ratio),
            h.fmt_ratio(floors[row.label] / row.fbx) if row.label in floors else "",
        ]
        for row in speed
    ]
    header = ["row", "with frame_stack", "stacks stored", "ratio", "floor: bare frames"]
    report.table(header, cells, align="lrrrr", section="speed")
    report.write(
        [timing.note(), "Targets: memory ratio <= 1.05, peak <= 8 GB, add <= 0.5x, sample <= 1.0x."]
    )


def argparse_hidden() -> str:
    return "(internal) measure the peak memory of filling this many transitions"


if __name__ == "__main__":
    sys.exit(main())
