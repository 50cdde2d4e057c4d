"""A numpy model of episodes as the unit: from the logical history of each row (every step
ever added, with its episode-end flag) and the ring's capacity, which transitions, futures,
episode starts and epoch items a buffer may draw, and with what probability."""

import numpy as np


class EpisodeReference:
    """`rows` rows whose steps are numbered from 0 as they are added; a buffer of
    `capacity` steps per row keeps the newest `capacity` of them."""

    def __init__(self, rows: int, capacity: int):
        self.rows, self.capacity = rows, capacity
        self.dones: list[list[bool]] = [[] for _ in range(rows)]

    @property
    def added(self) -> int:
        return len(self.dones[0])

    def add(self, dones: np.ndarray) -> None:
        """Appends `(rows, t)` episode-end flags."""
        for r in range(self.rows):
            self.dones[r].extend(bool(d) for d in dones[r])

    def stored(self) -> range:
        """The step numbers each row keeps."""
        return range(max(0, self.added - self.capacity), self.added)

    def _ended(self, row: int, g: int) -> bool:
        return self.dones[row][g]

    # -- sample_future ---------------------------------------------------------------------

    def futures(self, row: int, g: int) -> int:
        """For the transition `(g, g + 1)`, how many steps of its episode are stored from
        `g + 1` on (0 when it does not qualify)."""
        stored = self.stored()
        if g < stored.start or g + 1 >= stored.stop or self._ended(row, g):
            return 0
        m = 1
        while g + m < stored.stop - 1 and not self._ended(row, g + m):
            m += 1
        return m

    def future_probabilities(
        self, discount: float, skipped: dict[int, int] | None = None
    ) -> dict[tuple[int, int, int], float]:
        """`{(row, g, k): probability}` of drawing the transition `(g, g + 1)` of `row`
        with the future `g + k`; `skipped[row]`, oldest steps that cannot be a `first`."""
        qualifying = [
            (r, g, m)
            for r in range(self.rows)
            for g in self.stored()
            if g >= self.stored().start + (skipped or {}).get(r, 0)
            for m in [self.futures(r, g)]
            if m > 0
        ]
        out = {}
        for r, g, m in qualifying:
            weights = discount ** np.arange(m)
            for k in range(1, m + 1):
                out[(r, g, k)] = weights[k - 1] / weights.sum() / len(qualifying)
        return out

    # -- sample_episodes -------------------------------------------------------------------

    def episode_starts(self) -> list[tuple[int, int]]:
        """`(row, g)` of every stored step that starts an episode: the row's first step
        ever while the ring has not filled (once full, the state cannot tell its oldest
        step from a later one), or a step whose predecessor is stored and ended an
        episode."""
        stored = self.stored()
        return [
            (r, g)
            for r in range(self.rows)
            for g in stored
            if (g == 0 and self.added < self.capacity)
            or (g - 1 >= stored.start and self._ended(r, g - 1))
        ]

    def episode_mask(self, row: int, g: int, length: int) -> np.ndarray:
        """Which of the `length` steps from `g` belong to `g`'s episode and are stored."""
        mask = np.zeros(length, bool)
        for i in range(length):
            if g + i >= self.stored().stop:
                break
            mask[i] = True
            if self._ended(row, g + i):
                break
        return mask


def chunk(ref: EpisodeReference, rng: np.random.Generator, steps: int, p_end: float) -> dict:
    """The next `steps` steps of every row of `ref`, recorded in it: `{"row", "g", "done"}`,
    each step naming its row and number, episodes ending with probability `p_end`."""
    first = ref.added
    dones = rng.random((ref.rows, steps)) < p_end
    ref.add(dones)
    g = np.broadcast_to(first + np.arange(steps, dtype=np.int32), (ref.rows, steps))
    row = np.broadcast_to(np.arange(ref.rows, dtype=np.int32)[:, None], (ref.rows, steps))
    return {"row": row, "g": g, "done": dones}
