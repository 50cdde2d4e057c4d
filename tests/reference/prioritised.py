"""A numpy model of the prioritised trajectory buffer's priorities, from the logical history.

Physical index `p` holds the newest global step `g` with `g % capacity == p`. An item is a
window of `length` steps of one row starting at a physical multiple of `period`; it is valid
when all its positions hold stored steps whose global times are consecutive. An add gives
every window it writes into that is valid before or after it a new generation (odd exactly
while valid), and the running maximum priority if valid after it, zero otherwise. A
window's mask comes from the episode ends at its global times.
"""

import numpy as np

from .trajectory import window_mask


class PrioritisedReference:
    def __init__(self, rows, capacity, length, period, exponent, strict=False):
        self.rows, self.capacity, self.length, self.period = rows, capacity, length, period
        # With `strict`, a window is valid only if no episode ends before its last step.
        self.strict = strict
        self.ends = np.zeros((rows, 0), bool)
        self.exponent = np.float32(exponent)
        self.starts_per_row = capacity // period
        self.num_items = rows * self.starts_per_row
        self.generations = (2**31 - 1) // self.num_items
        self.total = 0
        self.priority = np.zeros(self.num_items, np.float32)
        self.generation = np.zeros(self.num_items, np.int64)
        self.max_priority = np.float32(1.0)

    def global_time(self, p):
        """The global time stored at physical `p`, or None."""
        if p >= self.total:
            return None
        g = p + ((self.total - 1 - p) // self.capacity) * self.capacity
        return g if g >= self.total - self.capacity else None

    def item(self, row, start):
        # Column by column: the windows of all rows that start at one time are consecutive.
        return (start // self.period) * self.rows + row

    def window(self, item):
        """The `(row, start)` of an item's window."""
        column, row = divmod(item, self.rows)
        return row, column * self.period

    def window_times(self, start):
        """Global times of the window at physical `start`, or None if it is not valid."""
        times = [self.global_time((start + j) % self.capacity) for j in range(self.length)]
        stored = [t for t in times if t is not None]
        if len(stored) < self.length or any(b != a + 1 for a, b in zip(stored, stored[1:])):
            return None
        return stored

    def mask(self, row, start, ends):
        """The mask of the window of `row` at physical `start`, given the episode-end flags
        `ends` of every step ever added, `(rows, total)`."""
        times = self.window_times(start)
        assert times is not None, "only a valid window has a mask"
        return window_mask(np.asarray(ends)[row, times])

    def allowed(self, row, start):
        """Whether the window of `row` at physical `start` is valid."""
        times = self.window_times(start)
        if times is None:
            return False
        return not (self.strict and self.ends[row, times[:-1]].any())

    def valid(self):
        out = np.zeros(self.num_items, bool)
        for start in range(0, self.capacity, self.period):
            for row in range(self.rows):
                out[self.item(row, start)] = self.allowed(row, start)
        return out

    def add(self, steps, ends=None):
        written = {(self.total + j) % self.capacity for j in range(steps)}
        starts = range(0, self.capacity, self.period)
        valid_before = self.valid()
        self.total += steps
        new_ends = np.zeros((self.rows, steps), bool) if ends is None else np.asarray(ends)
        self.ends = np.concatenate([self.ends, new_ends], axis=1)
        valid_after = self.valid()
        for start in starts:
            window = {(start + j) % self.capacity for j in range(self.length)}
            for row in range(self.rows):
                item = self.item(row, start)
                # A window written into that is valid neither before nor after keeps priority
                # 0 and its generation: no update could have been aimed at it. A generation
                # is odd exactly while the window is valid, so one that was valid and is
                # valid again (a new window) moves on by two.
                if window & written and (valid_after[item] or valid_before[item]):
                    self.generation[item] += 2 if valid_before[item] and valid_after[item] else 1
                    self.priority[item] = self.max_priority if valid_after[item] else 0

    def set_priorities(self, indices, priorities):
        valid = self.valid()
        for index, value in zip(np.asarray(indices).tolist(), np.asarray(priorities).tolist()):
            generation, item = divmod(index, self.num_items)
            value = np.float32(value)
            if (
                0 <= index
                and generation < self.generations
                and valid[item]
                and (self.generation[item] // 2) % self.generations == generation
                and np.isfinite(value)
                and value >= 0
            ):
                # Zero stays zero whatever the exponent (Flashbax's `where(p == 0, 0, p ** a)`).
                self.priority[item] = value**self.exponent if value > 0 else np.float32(0)
                self.max_priority = max(self.max_priority, self.priority[item])
