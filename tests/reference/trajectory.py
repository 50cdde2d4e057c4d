"""A numpy model of the trajectory buffer's semantics, written from the logical history.

Each row keeps every step ever added, with global time `g`. The ring stores the newest
`capacity` of them at physical index `g % capacity`; windows start on the period grid counted
from the oldest stored step and end at or before the newest one. With episode ends, a
window's mask is True up to and including its first episode end.
"""

import numpy as np


def window_mask(ends):
    """A window's mask from its episode-end flags: its first step is always in; each later
    step is in when the step before it is in and did not end the episode."""
    mask = np.ones(len(ends), bool)
    for j in range(1, len(ends)):
        mask[j] = mask[j - 1] and not ends[j - 1]
    return mask


class TrajectoryReference:
    def __init__(self, rows, capacity, length, period, min_length, example):
        self.rows, self.capacity, self.length, self.period = (
            rows,
            capacity,
            length,
            period,
        )
        self.min_length = max(min_length, length)
        self.example = {k: np.asarray(v) for k, v in example.items()}
        self.history = {k: np.zeros((rows, 0) + v.shape, v.dtype) for k, v in self.example.items()}

    @property
    def total(self) -> int:
        return next(iter(self.history.values())).shape[1]

    def add(self, batch):
        for k, v in batch.items():
            self.history[k] = np.concatenate([self.history[k], np.asarray(v)], axis=1)

    @property
    def oldest(self) -> int:
        return max(0, self.total - self.capacity)

    def state(self):
        """`(experience, current_index, is_full)` as the buffer must hold them."""
        experience = {}
        for k, v in self.example.items():
            store = np.zeros((self.rows, self.capacity) + v.shape, v.dtype)
            for g in range(self.oldest, self.total):
                store[:, g % self.capacity] = self.history[k][:, g]
            experience[k] = store
        return experience, self.total % self.capacity, self.total >= self.capacity

    def can_sample(self) -> bool:
        return self.total >= self.capacity or self.total >= self.min_length

    def window_starts(self) -> list[int]:
        """Global times of the first step of every valid window."""
        return list(range(self.oldest, self.total - self.length + 1, self.period))

    def window(self, row: int, start: int):
        return {k: v[row, start : start + self.length] for k, v in self.history.items()}

    def mask(self, row: int, start: int, episode_end):
        """The mask of the window of `row` from global time `start`."""
        return window_mask(episode_end(self.window(row, start)))
