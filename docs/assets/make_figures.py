"""Draws the documentation's figures from the library's real behaviour.

Each figure builds a small buffer with eqx_replay, adds data that names its own steps (a
step counter `t` and a row id; real Breakout frames for `frames.png`), samples from it, and
draws what the state holds and what came back: nothing in a figure is typed in by hand.
Re-running gives byte-identical files; `tests/test_figures.py` checks that the committed
figures are the ones the library draws now, so after a change to sampling, run this and
commit what it writes.

    python docs/assets/make_figures.py            # writes next to this script
    python docs/assets/make_figures.py --out DIR
"""

import argparse
import pathlib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import jax
import matplotlib
import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch, Rectangle

import eqx_replay


HERE = pathlib.Path(__file__).resolve().parent
FIGURES = ("ring.svg", "windows.svg", "boundaries.svg", "frames.png", "episodes.svg")

# One palette for every figure (Okabe-Ito, safe for colour-blind readers), on a white card
# with transparent corners, which reads on the light and the dark (slate) theme alike.
INK = "#222222"
MUTED = "#666666"
LINE = "#8c8c8c"
PALE = "#eeeeee"
BLUE = "#0072B2"  # stored steps; a mask's True
ORANGE = "#E69F00"  # what `sample` drew
VERMILION = "#D55E00"  # an episode end; the write head
GREEN = "#009E73"  # an episode start
PURPLE = "#CC79A7"  # a future goal
WIDTH_IN = 7.2  # ~700 px

STYLE: dict[Any, Any] = {
    "svg.hashsalt": "eqx_replay",
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "hatch.color": "#b0b0b0",
    "hatch.linewidth": 0.6,
}


def tint(color: str, amount: float) -> str:
    """`color` mixed with white: `amount` 0 is white, 1 the colour."""
    r, g, b = (1 - amount * (1 - x) for x in colors.to_rgb(color))
    return colors.to_hex((r, g, b))


class Canvas:
    """A figure drawn in units (a cell of a buffer is 1 x 1), y pointing down."""

    def __init__(self, width: float, height: float, title: str, subtitle: str = ""):
        self.width, self.height = width, height
        self.fig = Figure(figsize=(WIDTH_IN, WIDTH_IN * height / width))
        self.fig.patch.set_alpha(0.0)
        ax = self.fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_axis_off()
        ax.patch.set_alpha(0.0)
        self.ax = ax
        card = FancyBboxPatch(
            (0.06, 0.06),
            width - 0.12,
            height - 0.12,
            boxstyle="round,pad=0,rounding_size=0.35",
            facecolor="white",
            edgecolor="#d0d0d0",
            linewidth=0.8,
            zorder=-10,
        )
        ax.add_patch(card)
        self.text(0.5, 0.6, title, size=12, weight="bold")
        if subtitle:
            self.text(0.5, 1.15, subtitle, color=MUTED)

    def text(self, x: float, y: float, s: str, **kw: Any) -> None:
        kw.setdefault("color", INK)
        kw.setdefault("va", "center")
        self.ax.text(x, y, s, **kw)

    def cell(
        self,
        x: float,
        y: float,
        label: str = "",
        fill: str = "white",
        w: float = 1.0,
        h: float = 1.0,
        edge: str = LINE,
        hatch: str | None = None,
        color: str = INK,
        lw: float = 0.8,
        **kw: Any,
    ) -> None:
        self.ax.add_patch(
            Rectangle((x, y), w, h, facecolor=fill, edgecolor=edge, linewidth=lw, hatch=hatch)
        )
        if label:
            self.text(x + w / 2, y + h / 2, label, ha="center", color=color, **kw)

    def line(self, xs: Iterable[float], ys: Iterable[float], **kw: Any) -> None:
        kw.setdefault("color", INK)
        kw.setdefault("solid_capstyle", "butt")
        self.ax.add_line(Line2D(list(xs), list(ys), **kw))

    def arrow(self, start: tuple[float, float], end: tuple[float, float], **kw: Any) -> None:
        props = {"arrowstyle": "-|>", "color": INK, "lw": 1.0, "shrinkA": 0, "shrinkB": 0}
        self.ax.annotate("", xy=end, xytext=start, arrowprops={**props, **kw})

    def legend(self, x: float, y: float, entries: list[tuple[Callable[[float, float], None], str]]):
        """A row of `(draw a key at (x, y), text)` entries from `x`."""
        for draw, label in entries:
            draw(x, y)
            self.text(x + 0.9, y, label, color=MUTED)
            x += 1.6 + self.chars(len(label))

    def box_key(self, fill: str, hatch: str | None = None) -> Callable[[float, float], None]:
        """A legend key: a small cell."""
        return lambda x, y: self.cell(x, y - 0.25, fill=fill, w=0.7, h=0.5, hatch=hatch)

    def bar_key(self, color: str, lw: float) -> Callable[[float, float], None]:
        """A legend key: a short line."""
        return lambda x, y: self.line([x, x + 0.6], [y, y], color=color, lw=lw)

    def chars(self, n: int, size: float = 9) -> float:
        """About how wide `n` characters of DejaVu Sans are, in units."""
        return n * 0.6 * size / (72 * WIDTH_IN / self.width)

    def save(self, path: pathlib.Path, dpi: int = 100) -> None:
        if path.suffix == ".svg":
            metadata: dict[str, Any] = {"Date": None, "Creator": None}
        else:
            metadata = {"Software": None}
        self.fig.savefig(path, dpi=dpi, metadata=metadata)


def steps_batch(first: int, count: int, rows: int, **extra: np.ndarray) -> dict[str, np.ndarray]:
    """`count` steps of `rows` rows, from step `first`: `t` counts the steps, `row` names the
    row, so that every stored or sampled step says where it came from."""
    t = np.arange(first, first + count, dtype=np.int32)
    batch = {
        "t": np.broadcast_to(t, (rows, count)).copy(),
        "row": np.broadcast_to(np.arange(rows, dtype=np.int32)[:, None], (rows, count)).copy(),
    }
    return batch | extra


def listing(steps: list[int]) -> str:
    return ", ".join(str(s) for s in steps)


# --- 1 and 2: the ring and the windows ----------------------------------------------------

ROWS, CAPACITY, LENGTH, PERIOD, ADDED = 3, 12, 4, 3, 17


def ring_buffer() -> tuple[Any, Any]:
    """3 rows of 12 steps, windows of 4 on a period of 3, after 17 steps (added as 8, then 9):
    the ring has wrapped. The example of "Sampling semantics, exactly"."""
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=8,
        sample_sequence_length=LENGTH,
        period=PERIOD,
        min_length_time_axis=LENGTH,
        max_length_time_axis=CAPACITY,
    )
    state = buffer.init({"t": np.int32(0), "row": np.int32(0)})
    state = buffer.add(state, steps_batch(0, 8, ROWS))
    state = buffer.add(state, steps_batch(8, ADDED - 8, ROWS))
    return buffer, state


def age_fill(age: int, span: int) -> str:
    """Lighter for older steps, darker for newer ones."""
    return tint(BLUE, 0.08 + 0.42 * age / max(span - 1, 1))


def stored_steps(c: Canvas, x0: float, y: float, t: np.ndarray, h: float = 1.0) -> None:
    """One row of the ring, each cell labelled with the step stored there."""
    for i, step in enumerate(t.tolist()):
        c.cell(x0 + i, y, str(step), fill=age_fill(step - int(t.min()), len(t)), h=h)


def ring(out: pathlib.Path, state: Any) -> None:
    t = np.asarray(state.experience["t"])
    head, full = int(state.current_index), bool(state.is_full)
    newest, oldest = int(t[0].max()), int(t[0].min())
    x0, y0 = 1.7, 3.1
    c = Canvas(
        15.0,
        9.3,
        "The trajectory buffer's storage: a ring per row",
        f"{ROWS} rows × {CAPACITY} steps, after {ADDED} steps were added to each row "
        f"(each cell: the step stored there)",
    )
    c.text(x0 - 0.15, y0 - 0.35, "time index", ha="right", color=MUTED, size=8)
    for i in range(CAPACITY):
        c.text(x0 + i + 0.5, y0 - 0.35, str(i), ha="center", color=MUTED, size=8)
    for r in range(ROWS):
        y = y0 + r * 1.15
        c.text(x0 - 0.2, y + 0.5, f"row {r}", ha="right")
        stored_steps(c, x0, y, t[r])
    bottom = y0 + ROWS * 1.15 - 0.15
    # The write head, above its column.
    xh = x0 + head + 0.5
    c.arrow((xh, 1.7), (xh, y0 - 0.6), color=VERMILION, lw=1.4)
    c.text(xh + 0.25, 1.75, f"write head: current_index = {head}", color=VERMILION)
    c.text(xh + 0.25, 2.2, f"the next add overwrites step {t[0, head]} first", color=MUTED, size=8)
    c.line([x0 + head] * 2, [y0 - 0.05, bottom + 0.05], color=VERMILION, lw=2.0)

    # Brackets under the newest and the oldest runs.
    def bracket(a: int, b: int, label: str) -> None:
        yb = bottom + 0.3
        xa, xb = x0 + a + 0.08, x0 + b - 0.08
        c.line([xa, xa, xb, xb], [yb - 0.12, yb, yb, yb - 0.12], color=MUTED, lw=1.0)
        c.text(x0 + (a + b) / 2, yb + 0.42, label, ha="center", color=MUTED, size=8.5)

    bracket(0, head, f"newest: steps {t[0, 0]}–{newest},\nwritten after the wrap")
    bracket(head, CAPACITY, f"oldest: steps {oldest}–{t[0, -1]}")
    c.text(
        x0,
        bottom + 1.6,
        f"is_full = {full}: every cell holds a step, the oldest ({oldest}) at the write head",
    )
    c.text(x0, bottom + 2.05, f"and the newest ({newest}) just before it.")
    c.text(
        x0,
        bottom + 2.5,
        f"Steps 0–{oldest - 1} were overwritten. Darker cells are newer.",
        color=MUTED,
    )
    c.save(out / "ring.svg")


def windows(out: pathlib.Path, buffer: Any, state: Any) -> None:
    t = np.asarray(state.experience["t"])
    head = int(state.current_index)
    # Every window `sample` can draw (`epoch` returns each once), and what one `sample` drew.
    every, real = buffer.epoch(state, jax.random.key(1))
    first = np.asarray(every.experience["t"])[np.asarray(real)][:, 0]
    rows = np.asarray(every.experience["row"])[np.asarray(real)][:, 0]
    allowed = sorted(zip(rows.tolist(), first.tolist()))
    drawn = buffer.sample(state, jax.random.key(0)).experience
    counts = Counter(zip(np.asarray(drawn["row"])[:, 0].tolist(), np.asarray(drawn["t"])[:, 0]))
    assert set(counts) <= set(allowed)  # sample draws only windows that epoch lists
    starts = sorted({s for _, s in allowed})
    covered = {s + j for s in starts for j in range(LENGTH)}
    idle = [s for s in sorted(t[0].tolist()) if s not in covered]

    x0, y0, lane = 1.7, 2.55, 0.34
    block = 0.8 + lane * len(starts) + 0.45
    height = y0 + ROWS * block + 2.2
    c = Canvas(
        15.8,
        height,
        f"The windows sample draws: L = {LENGTH} steps, period = {PERIOD}",
        f"the ring above; grey: every window sample may draw (buffer.epoch), orange: "
        f"one sample of {len(drawn['t'])}",
    )
    for i in range(CAPACITY):
        c.text(x0 + i + 0.5, y0 - 0.3, str(i), ha="center", color=MUTED, size=8)
    c.text(x0 - 0.15, y0 - 0.3, "time index", ha="right", color=MUTED, size=8)
    for r in range(ROWS):
        y = y0 + r * block
        c.text(x0 - 0.2, y + 0.4, f"row {r}", ha="right")
        stored_steps(c, x0, y, t[r], h=0.8)
        for k, s in enumerate(s for row, s in allowed if row == r):
            yl = y + 0.8 + lane * (k + 0.6)
            c.text(x0 - 0.2, yl, f"from {s}", ha="right", color=MUTED, size=7.5)
            count = counts.get((r, s), 0)
            where = [int(np.flatnonzero(t[r] == s + j)[0]) for j in range(LENGTH)]
            runs: list[list[int]] = [[where[0]]]
            for p in where[1:]:
                if p == runs[-1][-1] + 1:
                    runs[-1].append(p)
                else:
                    runs.append([p])
            style = {"color": ORANGE, "lw": 4.5} if count else {"color": LINE, "lw": 1.3}
            for n, run in enumerate(runs):
                left, right = x0 + run[0] + 0.12, x0 + run[-1] + 0.88
                if n + 1 < len(runs):  # wraps round: on at time index 0
                    right = x0 + CAPACITY
                if n > 0:
                    left = x0
                c.line([left, right], [yl, yl], **style)
            c.ax.plot([x0 + where[0] + 0.12], [yl], "o", color=style["color"], markersize=3.5)
            if count:
                c.text(x0 + CAPACITY + 0.25, yl, f"drawn ×{count}", color=INK, size=8)
        c.line([x0 + head] * 2, [y - 0.05, y + block - 0.4], color=VERMILION, lw=2.0)
    yb = y0 + ROWS * block + 0.15
    c.text(
        x0,
        yb,
        f"A window starts every {PERIOD} steps from the oldest step ({listing(starts)}). "
        "It may wrap round the ring's end,",
    )
    c.text(
        x0,
        yb + 0.45,
        "never across the write head (red). "
        + (f"Steps {listing(idle)} are in no window yet." if idle else ""),
    )

    c.legend(
        x0,
        yb + 1.1,
        [
            (c.bar_key(ORANGE, 4.5), "drawn by sample"),
            (c.bar_key(LINE, 1.3), "allowed, not drawn"),
        ],
    )
    c.save(out / "windows.svg")


# --- 3: episode boundaries ------------------------------------------------------------------


def boundaries(out: pathlib.Path) -> None:
    """One row, episodes ending at steps 2 and 7, windows of 5 on a period of 1: the example
    of "Episode boundaries"."""
    added, ends, length, draws = 10, (2, 7), 5, 300
    done = np.isin(np.arange(added), ends)[None]
    results: dict[str, Counter] = {}
    masks: dict[int, list[bool]] = {}
    allowed: dict[str, list[int]] = {}
    for mode in ("ignore", "mask", "strict"):
        buffer = eqx_replay.make_trajectory_buffer(
            add_batch_size=1,
            sample_batch_size=draws,
            sample_sequence_length=length,
            period=1,
            min_length_time_axis=length,
            max_length_time_axis=12,
            episode_end=lambda step: step["done"],
            boundary=mode,
        )
        state = buffer.init({"t": np.int32(0), "row": np.int32(0), "done": np.bool_(False)})
        state = buffer.add(state, steps_batch(0, added, 1, done=done))
        sample = buffer.sample(state, jax.random.key(0))
        first = np.asarray(sample.experience["t"])[:, 0].tolist()
        results[mode] = Counter(first)
        every, real = buffer.epoch(state, jax.random.key(1))
        allowed[mode] = sorted(np.asarray(every.experience["t"])[np.asarray(real)][:, 0])
        assert set(results[mode]) <= set(allowed[mode])  # sample draws what epoch lists
        if mode == "mask":
            for s, m in zip(first, np.asarray(sample.mask).tolist()):
                assert masks.setdefault(s, m) == m  # one mask per window
    assert results["mask"] == results["ignore"]  # the same key draws the same windows

    x0, y0 = 2.4, 2.6
    columns = [x0 + added + 1.6 + 2.0 * n for n in range(3)]
    starts = allowed["ignore"]
    height = y0 + 2.0 + len(starts) + 2.0
    c = Canvas(
        columns[-1] + 1.4,
        height,
        "Episode boundaries: what each boundary mode draws",
        f"one row, episodes ending at steps {ends[0]} and {ends[1]}; windows of {length} "
        f"steps, period 1; {draws} windows drawn in each mode",
    )
    episode = np.concatenate([[0], np.cumsum(done[0])[:-1]])
    c.text(x0 - 0.2, y0 + 0.5, "step", ha="right")
    for s in range(added):
        fill = PALE if episode[s] % 2 else "white"
        c.cell(x0 + s, y0, str(s), fill=fill)
        c.text(x0 + s + 0.5, y0 + 1.3, "ABCDEFGH"[episode[s]], ha="center", color=MUTED)
        if done[0, s]:
            c.line([x0 + s + 1] * 2, [y0 - 0.25, y0 + 1.6], color=VERMILION, lw=2.2)
            c.text(x0 + s + 0.95, y0 - 0.4, "done", ha="right", color=VERMILION, size=8)
    c.text(x0 - 0.2, y0 + 1.3, "episode", ha="right", color=MUTED)
    yw = y0 + 2.1
    c.text(columns[1], y0 + 0.95, "times drawn", ha="center", color=MUTED)
    for x, mode in zip(columns, results):
        c.text(x, y0 + 1.4, f'"{mode}"', ha="center", weight="bold")
    for k, s in enumerate(starts):
        y = yw + k
        c.text(x0 - 0.2, y + 0.4, f"window {k}", ha="right", color=MUTED)
        for j, keep in enumerate(masks[s]):
            fill, hatch = (tint(BLUE, 0.45), None) if keep else ("white", "////")
            c.cell(x0 + s + j, y, str(s + j), fill=fill, h=0.8, hatch=hatch)
        for x, mode in zip(columns, results):
            count = results[mode][s]
            c.text(
                x,
                y + 0.4,
                str(count) if count else "never",
                ha="center",
                color=ORANGE if count else MUTED,
                weight="bold" if count else "normal",
            )
    yb = yw + len(starts) + 0.35
    c.legend(
        x0,
        yb,
        [
            (c.box_key(tint(BLUE, 0.45)), "sample.mask True"),
            (c.box_key("white", "////"), "False: after the first episode end"),
        ],
    )
    c.text(
        x0,
        yb + 0.75,
        '"mask" draws what "ignore" draws (the same key gives the same windows) and adds',
    )
    c.text(
        x0,
        yb + 1.2,
        'the mask; "strict" draws only windows with no episode end before their last step.',
    )
    c.save(out / "boundaries.svg")


# --- 4: frames stored once ------------------------------------------------------------------

SIZE = 4


def atari_steps(count: int, episode_steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` steps of real ALE Breakout, random actions, stacks of `SIZE` 84x84 frames padded
    with the episode's first frame, episodes cut after `episode_steps` steps: `(obs, done)`."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0)
    env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, noop_max=0, screen_size=84)
    env = gym.wrappers.TimeLimit(env, max_episode_steps=episode_steps)
    env = gym.wrappers.FrameStackObservation(env, SIZE, padding_type="reset")
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    stacks, dones = [], []
    for _ in range(count):
        stacks.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        dones.append(terminated or truncated)
        if dones[-1]:
            obs, _ = env.reset()
    env.close()
    return np.asarray(stacks), np.asarray(dones)


def frames(out: pathlib.Path) -> None:
    count, episode_steps = 8, 5
    obs, done = atari_steps(count, episode_steps, seed=4)
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=1,
        sample_batch_size=64,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_length_time_axis=count,
        episode_end=lambda step: step["done"],
        frame_stack=eqx_replay.FrameStack(lambda step: step["obs"], SIZE),
    )
    state = buffer.init({"obs": obs[0], "done": done[0], "t": np.int32(0)})
    state = buffer.add(
        state, {"obs": obs[None], "done": done[None], "t": np.arange(count, dtype=np.int32)[None]}
    )
    stored = np.asarray(state.experience["obs"])[0]  # (steps, 84, 84): one frame per step
    starts = np.asarray(state.frame_stack.episode_starts)[0]
    sample = buffer.sample(state, jax.random.key(0)).experience
    sampled_t = np.asarray(sample["t"])[:, 0]
    start = int(np.flatnonzero(starts)[1])
    shown = [start - 2, start + 1]  # a full stack, and one padded at an episode start
    stacks = {}
    for g in shown:
        stack = np.asarray(sample["obs"])[int(np.flatnonzero(sampled_t == g)[0]), 0]
        assert np.array_equal(stack, obs[g])  # rebuilt exactly as the environment gave it
        stacks[g] = stack

    def which(frame: np.ndarray, g: int) -> int:
        """The stored step of `g`'s episode, up to `g`, whose frame this is (the first frames
        of two episodes may be equal: Breakout resets to the same screen)."""
        first = max(int(e) for e in np.flatnonzero(starts) if e <= g)
        matches = [s for s in range(first, g + 1) if np.array_equal(stored[s], frame)]
        assert len(matches) == 1, matches
        return matches[0]

    fw, gap, x0 = 1.0, 0.12, 1.9
    width = x0 + max(count, 2 * SIZE + 0.3) * (fw + gap) + 0.3
    c = Canvas(
        width,
        8.2,
        "Frames stored once: one frame per step, stacks rebuilt on sampling",
        f"real Breakout (84 × 84 grey), stacks of {SIZE}, episodes cut after {episode_steps} steps",
    )

    def frame(x: float, y: float, image: np.ndarray, edge: str = LINE, lw: float = 0.8) -> None:
        c.ax.imshow(
            image,
            cmap="gray",
            vmin=0,
            vmax=255,
            extent=(x, x + fw, y + fw, y),
            interpolation="nearest",
            zorder=1,
        )
        c.ax.add_patch(Rectangle((x, y), fw, fw, fill=False, edgecolor=edge, linewidth=lw))

    y1 = 2.05
    c.text(x0 - 0.2, y1 + 0.5, "stored\n(row 0)", ha="right")
    for s in range(count):
        x = x0 + s * (fw + gap)
        sampled = s in shown
        frame(x, y1, stored[s], edge=ORANGE if sampled else LINE, lw=2.0 if sampled else 0.8)
        c.text(x + fw / 2, y1 - 0.3, f"step {s}", ha="center", size=8)
        if starts[s]:
            c.text(x + fw / 2, y1 + fw + 0.27, "episode\nstart", ha="center", color=GREEN, size=7.5)
            c.line([x - gap / 2] * 2, [y1 - 0.15, y1 + fw + 0.05], color=GREEN, lw=2.0)
    y2 = 4.45
    for n, g in enumerate(shown):
        xs = x0 + n * (SIZE + 0.3) * (fw + gap)
        episode_start = max(int(e) for e in np.flatnonzero(starts) if e <= g)
        what = f"sampled step {g}: its stack of {SIZE}"
        c.text(xs - 0.05, y2 - 0.45, what, weight="bold")
        for j in range(SIZE):
            x = xs + j * (fw + gap)
            src = which(stacks[g][j], g)
            pad = g - SIZE + 1 + j < episode_start  # before the episode's first frame
            frame(x, y2, stacks[g][j], edge=GREEN if pad else ORANGE, lw=2.0)
            c.text(x + fw / 2, y2 + fw + 0.22, f"step {src}", ha="center", size=8)
            if pad:
                c.text(x + fw / 2, y2 + fw + 0.55, "padding", ha="center", color=GREEN, size=7.5)
    c.text(x0 - 0.2, y2 + 0.5, "sampled\nstacks", ha="right")
    c.text(
        x0 - 0.05,
        y2 + 2.0,
        f"Step {shown[1]}'s episode starts at step {start}: the older frames of its stack are "
        f"padding, step {start}'s frame",
    )
    c.text(
        x0 - 0.05,
        y2 + 2.45,
        'repeated (padding="first"). Each sampled stack equals the one the environment gave.',
    )
    c.text(
        x0 - 0.05,
        y2 + 2.9,
        f"Stored: {stored.shape[0]} frames of 84 × 84, not {count} stacks of {SIZE}.",
        color=MUTED,
    )
    c.save(out / "frames.png", dpi=130)


# --- 5: episodes as the unit ----------------------------------------------------------------


def episodes(out: pathlib.Path) -> None:
    # `sample_episodes`: the example of "Episodes as the unit", a ring of 12 after 18 steps.
    ends, added, capacity, length = (5, 11, 14), 18, 12, 4
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=1,
        sample_batch_size=16,
        sample_sequence_length=length,
        period=1,
        min_length_time_axis=length,
        max_length_time_axis=capacity,
        episode_end=lambda step: step["done"],
    )
    done = np.isin(np.arange(added), ends)[None]
    state = buffer.init({"t": np.int32(0), "row": np.int32(0), "done": np.bool_(False)})
    state = buffer.add(state, steps_batch(0, capacity, 1, done=done[:, :capacity]))
    state = buffer.add(state, steps_batch(capacity, added - capacity, 1, done=done[:, capacity:]))
    held = np.roll(np.asarray(state.experience["t"])[0], -int(state.current_index))  # oldest on
    sample = buffer.sample_episodes(state, jax.random.key(0))
    got = Counter()
    mask_of: dict[int, list[bool]] = {}
    for steps, mask in zip(np.asarray(sample.experience["t"]), np.asarray(sample.mask)):
        got[int(steps[0])] += 1
        assert mask_of.setdefault(int(steps[0]), mask.tolist()) == mask.tolist()
        assert np.array_equal(steps[mask], steps[0] + np.flatnonzero(mask))

    # `sample_future`: the flat buffer's example, two episodes of 5 steps.
    flat = eqx_replay.make_flat_buffer(
        max_length=64,
        min_length=2,
        sample_batch_size=5,
        add_sequences=True,
        add_batch_size=1,
        episode_end=lambda step: step["done"],
    )
    f_added, f_ends = 10, (4, 9)
    f_done = np.isin(np.arange(f_added), f_ends)[None]
    f_state = flat.init({"t": np.int32(0), "row": np.int32(0), "done": np.bool_(False)})
    f_state = flat.add(f_state, steps_batch(0, f_added, 1, done=f_done))
    future = flat.sample_future(f_state, jax.random.key(0), discount=1.0)
    firsts = np.asarray(future.first["t"]).tolist()
    seconds = np.asarray(future.second["t"]).tolist()
    goals = np.asarray(future.future["t"]).tolist()
    offsets = np.asarray(future.offset).tolist()

    x0 = 2.9
    width = x0 + capacity + 1 + 2.0
    ya = 3.15
    yb = ya + 1.75 + len(got) * 0.95 + 3.1
    height = yb + 1.35 + len(firsts) * 0.95 + 0.9
    c = Canvas(width, height, "Episodes as the unit")
    c.text(0.5, 1.2, "TrajectoryBuffer.sample_episodes", weight="bold")
    c.text(
        0.5,
        1.62,
        f"windows of {length} from an episode's first step; a ring of {capacity} after "
        f"{added} steps, {len(sample.experience['t'])} windows drawn",
        color=MUTED,
    )
    c.text(x0 - 0.2, ya + 0.5, "stored\n(oldest first)", ha="right")
    for i, s in enumerate(held.tolist()):
        c.cell(x0 + i, ya, str(s), fill=age_fill(i, capacity))
        if s in ends:
            c.line([x0 + i + 1] * 2, [ya - 0.25, ya + 1.15], color=VERMILION, lw=2.2)
            c.text(x0 + i + 0.95, ya - 0.4, "done", ha="right", color=VERMILION, size=8)
        if s in got:
            c.arrow((x0 + i + 0.5, ya - 0.75), (x0 + i + 0.5, ya - 0.08), color=GREEN, lw=1.4)
            c.text(x0 + i + 0.65, ya - 0.7, "start", color=GREEN, size=8)
    c.text(
        x0 + 0.05,
        ya + 1.35,
        f"step {held[0]}, the oldest, is no start: the step before it is gone",
        color=MUTED,
        size=8,
    )
    for n, s in enumerate(sorted(got)):
        y = ya + 1.75 + n * 0.95
        i = int(np.flatnonzero(held == s)[0])
        c.text(x0 - 0.2, y + 0.4, f"from step {s}", ha="right", color=MUTED)
        for j, keep in enumerate(mask_of[s]):
            fill, hatch = (tint(BLUE, 0.45), None) if keep else ("white", "////")
            c.cell(x0 + i + j, y, str(s + j) if keep else "", fill=fill, h=0.8, hatch=hatch)
        c.text(x0 + i + length + 0.25, y + 0.4, f"drawn ×{got[s]}", size=8)
    c.text(
        x0 + 0.05,
        ya + 1.75 + len(got) * 0.95 + 0.2,
        "mask True (filled): the episode's stored steps; False (hatched): after its end,",
        color=MUTED,
        size=8,
    )
    c.text(
        x0 + 0.05,
        ya + 1.75 + len(got) * 0.95 + 0.6,
        "or after the newest step (what the sample holds there is unspecified).",
        color=MUTED,
        size=8,
    )

    c.line([0.5, width - 0.5], [yb - 2.25, yb - 2.25], color="#dddddd", lw=0.8)
    c.text(0.5, yb - 1.7, "FlatBuffer.sample_future", weight="bold")
    c.text(
        0.5,
        yb - 1.28,
        f"transitions (first, second), each with a goal from its own episode's future; "
        f"{f_added} steps, discount = 1",
        color=MUTED,
    )
    c.text(x0 - 0.2, yb + 0.5, "step", ha="right")
    f_episode = np.concatenate([[0], np.cumsum(f_done[0])[:-1]])
    for s in range(f_added):
        c.cell(x0 + s, yb, str(s), fill=PALE if f_episode[s] % 2 else "white")
        if f_done[0, s]:
            c.line([x0 + s + 1] * 2, [yb - 0.25, yb + 1.15], color=VERMILION, lw=2.2)
            c.text(x0 + s + 0.95, yb - 0.4, "done", ha="right", color=VERMILION, size=8)
    for n, (a, b, g, k) in enumerate(zip(firsts, seconds, goals, offsets)):
        y = yb + 1.35 + n * 0.95
        c.text(x0 - 0.2, y + 0.4, f"sample {n}", ha="right", color=MUTED)
        for s in range(f_added):
            if s in (a, b):
                label = "first" if s == a else "second"
                c.cell(x0 + s, y, label, fill=tint(ORANGE, 0.6), h=0.8, size=6.5)
            elif s == g:
                c.cell(x0 + s, y, "future", fill=tint(PURPLE, 0.6), h=0.8, size=6.5)
            else:
                c.cell(x0 + s, y, "", h=0.8, edge="#d8d8d8")
        if g == b:  # the future is the transition's own second step
            c.ax.add_patch(
                Rectangle(
                    (x0 + g + 0.06, y + 0.06), 0.88, 0.68, fill=False, edgecolor=PURPLE, lw=2.0
                )
            )
        c.text(x0 + f_added + 0.25, y + 0.4, f"offset = {k}", size=8)
    yl = yb + 1.35 + len(firsts) * 0.95 + 0.3
    c.text(
        x0 + 0.05,
        yl,
        "offset: steps from first to future; 1 when the future is second itself (outlined).",
        color=MUTED,
        size=8,
    )
    c.save(out / "episodes.svg")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=HERE, help="where to write them")
    args = parser.parse_args(argv)
    # The same bits on every machine: the figures are compared byte for byte.
    jax.config.update("jax_platforms", "cpu")
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(STYLE):
        buffer, state = ring_buffer()
        ring(out, state)
        windows(out, buffer, state)
        boundaries(out)
        frames(out)
        episodes(out)
    for name in FIGURES:
        print(f"{out / name}: {(out / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
