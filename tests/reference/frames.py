"""A numpy model of frames stored once: the stacks an environment gives, and which windows
a frame-stacked buffer may draw, from the logical history of each row."""

import numpy as np


class FrameReference:
    """Rows of frames and episode ends, as an environment that stacks `size` frames
    produces them, and a buffer of `capacity` steps per row that stores them.

    `grid="logical"`: windows start every `period` steps from the oldest stored step (the
    uniform trajectory and flat buffers); `grid="physical"`: at the physical multiples of
    `period` (buffers that sample through a sum tree). `strict`: no episode ends before a
    window's last step."""

    def __init__(
        self,
        rows: int,
        capacity: int,
        length: int,
        period: int,
        size: int,
        padding: str,
        axis: int = 0,
        grid: str = "logical",
        strict: bool = False,
    ):
        self.rows, self.capacity, self.length, self.period = rows, capacity, length, period
        self.size, self.padding, self.axis, self.grid, self.strict = (
            size,
            padding,
            axis,
            grid,
            strict,
        )
        self.frames: list[list[np.ndarray]] = [[] for _ in range(rows)]
        self.dones: list[list[bool]] = [[] for _ in range(rows)]

    @property
    def added(self) -> int:
        return len(self.dones[0])

    @property
    def oldest(self) -> int:
        return max(0, self.added - self.capacity)

    def episode_start(self, row: int, g: int) -> int:
        start = g
        while start > 0 and not self.dones[row][start - 1]:
            start -= 1
        return start

    def stack(self, row: int, g: int) -> np.ndarray:
        """The stacked observation the environment gave at step `g` of `row`."""
        first = self.episode_start(row, g)
        frames = []
        for j in range(self.size):
            t = g - (self.size - 1) + j
            if t >= first:
                frames.append(self.frames[row][t])
            elif self.padding == "first":
                frames.append(self.frames[row][first])
            else:
                frames.append(np.zeros_like(self.frames[row][first]))
        return np.stack(frames, axis=self.axis)

    def add(self, frames: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Records `frames` `(rows, t, *frame)` and `dones` `(rows, t)`; returns the
        stacked observations the environment gave for them, `(rows, t, *stack)`."""
        stacks = []
        for row in range(self.rows):
            row_stacks = []
            for f, d in zip(frames[row], dones[row]):
                self.frames[row].append(np.asarray(f))
                self.dones[row].append(bool(d))
                row_stacks.append(self.stack(row, len(self.dones[row]) - 1))
            stacks.append(np.stack(row_stacks))
        return np.stack(stacks)

    def stack_complete(self, row: int, g: int) -> bool:
        """Whether every frame step `g`'s stack needs is still stored."""
        needed = max(self.episode_start(row, g), g - (self.size - 1))
        return needed >= self.oldest

    def windows(self) -> set[tuple[int, int]]:
        """The `(row, first step)` of every window the buffer may draw."""
        newest = self.added - 1
        out = set()
        for row in range(self.rows):
            if self.grid == "logical":
                firsts = range(self.oldest, newest - self.length + 2, self.period)
            else:
                firsts = [
                    g
                    for g in range(self.oldest, newest - self.length + 2)
                    if (g % self.capacity) % self.period == 0
                ]
            for g in firsts:
                if self.strict and any(self.dones[row][g : g + self.length - 1]):
                    continue
                if self.stack_complete(row, g):
                    out.add((row, g))
        return out
