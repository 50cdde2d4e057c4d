"""The mixer: one batch drawn from several buffers in fixed proportions, Flashbax's
`make_mixer`, without its waste and with its importance weights right.

Buffer `i` contributes `count_i` of the `sample_batch_size` items, from the normalised
proportions rounded down, the remainder going to the first buffer (Flashbax's rounding).
Each buffer draws only its share (Flashbax draws a full batch from every buffer and slices
it), and the samples are concatenated in buffer order. For prioritised buffers, an item of
buffer `i` is drawn with probability `share_i * p_i` under the mixture, `share_i =
count_i / sample_batch_size`, where `p_i` is its probability within buffer `i`; that is
the `probabilities` the mixed sample reports, so `importance_weights` corrects for the
mixture (Flashbax reports `p_i`, which biases the correction between buffers).
"""

import functools as ft
import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Bool

from ._base import AbstractPrioritisedBuffer, AbstractReplayBuffer
from ._checks import check_key, check_priorities, per_buffer, shape_str
from ._config import positive_int
from ._guard import poison_sample
from ._jit import compiled_method
from ._random import split


class MixerConfig(NamedTuple):
    """A mixer's configuration, validated (see `Mixer`): `counts` are the items drawn from
    each buffer."""

    buffers: tuple[Any, ...]
    sample_batch_size: int
    proportions: tuple[float, ...]
    counts: tuple[int, ...]


def mixer_config(*, buffers: object, sample_batch_size: object, proportions: object) -> MixerConfig:
    """Validates a mixer's configuration.

    **Returns:** the configuration; the items drawn from each buffer come from the
    normalised proportions rounded down, with what rounding leaves over added to the first
    buffer's (Flashbax's rule).
    """
    if not isinstance(buffers, (list, tuple)) or not buffers:
        raise TypeError(f"`buffers` must be a non-empty list or tuple of buffers; got {buffers!r}")
    for i, buffer in enumerate(buffers):
        if not isinstance(buffer, AbstractReplayBuffer):
            raise TypeError(
                f"`buffers[{i}]` is a {type(buffer).__name__}; a mixer samples buffers that "
                "take a key (a trajectory queue cannot be mixed)"
            )
        if type(buffer) is not type(buffers[0]):
            raise TypeError(
                f"`buffers` must be of one kind: buffers[0] is a {type(buffers[0]).__name__}, "
                f"buffers[{i}] a {type(buffer).__name__}"
            )
        if buffer.sharding is not None:
            raise ValueError(
                f"`buffers[{i}]` is sharded, which a mixer does not support: sample the "
                "sharded buffers one by one and concatenate the samples"
            )
    samples = positive_int("sample_batch_size", sample_batch_size)
    if not isinstance(proportions, (list, tuple)) or len(proportions) != len(buffers):
        raise ValueError(
            f"`proportions` must be a list or tuple of {len(buffers)} numbers, one per "
            f"buffer; got {proportions!r}"
        )
    shares = []
    for i, share in enumerate(proportions):
        if isinstance(share, bool) or not isinstance(share, numbers.Real):
            raise TypeError(f"`proportions[{i}]` must be a number; got {share!r}")
        if not (math.isfinite(share) and float(share) >= 0):
            raise ValueError(f"`proportions[{i}]` must be finite and >= 0; got {share}")
        shares.append(share)
    total = sum(shares)
    if total <= 0:
        raise ValueError(f"`proportions` must not all be zero; got {proportions!r}")
    # Flashbax's arithmetic, operation for operation, so that the counts agree.
    counts = [int(share / total * samples) for share in shares]
    counts[0] += samples - sum(counts)
    return MixerConfig(tuple(buffers), samples, tuple(float(p) for p in shares), tuple(counts))


class Mixer(eqx.Module):
    """Draws one batch from several buffers in fixed proportions (see the module
    docstring). Its methods take the buffers' states as a sequence, in the buffers' order.
    """

    buffers: tuple[AbstractReplayBuffer, ...] = eqx.field(static=True)
    sample_batch_size: int = eqx.field(static=True)
    proportions: tuple[float, ...] = eqx.field(static=True)
    counts: tuple[int, ...] = eqx.field(static=True)
    donate_state: bool = eqx.field(static=True)

    def __init__(
        self,
        buffers: Sequence[AbstractReplayBuffer],
        sample_batch_size: int,
        proportions: Sequence[float | int],
    ):
        """**Arguments:**

        - `buffers`: buffers of one kind (and one sample shape), each sampled with a key.
        - `sample_batch_size`: items per mixed sample.
        - `proportions`: non-negative numbers, one per buffer, not all zero: the shares of
            the sample, normalised.
        """
        self.buffers, self.sample_batch_size, self.proportions, self.counts = mixer_config(
            buffers=buffers, sample_batch_size=sample_batch_size, proportions=proportions
        )
        # `set_priorities` updates the states in place when every buffer does.
        self.donate_state = all(buffer.donate_state for buffer in self.buffers)

    @property
    def sharding(self) -> None:
        """A mixer is not sharded (nor are the buffers it mixes)."""
        return None

    def _check_states(self, where: str, states: Any) -> list[Any]:
        if not isinstance(states, (list, tuple)) or len(states) != len(self.buffers):
            got = (
                f"{len(states)} states" if isinstance(states, (list, tuple)) else repr(type(states))
            )
            raise TypeError(
                f"`{where}`: `states` must be a list or tuple of {len(self.buffers)} states, "
                f"one per buffer in order; got {got}"
            )
        for buffer, state in zip(self.buffers, states):
            buffer._check_state(where, state)
        return list(states)

    @compiled_method()
    def can_sample(self, states: Sequence[Any]) -> Bool[Array, "*batch"]:
        """Whether every buffer can be sampled (elementwise over batch axes in front of
        the states' fields, as `jax.pmap(buffer.add)` gives them)."""
        where = "Mixer.can_sample"
        if not isinstance(states, (list, tuple)) or len(states) != len(self.buffers):
            self._check_states(where, states)  # raises, naming what came
        answers = [
            per_buffer(where, state, buffer._check_state, buffer._can_sample)
            for buffer, state in zip(self.buffers, states)
        ]
        for i, answer in enumerate(answers[1:], start=1):
            if answer.shape != answers[0].shape:
                raise ValueError(
                    f"`{where}`: states[0] has batch axes {shape_str(answers[0].shape)} in "
                    f"front of its fields and states[{i}] has {shape_str(answer.shape)}; "
                    "expected the same for every buffer"
                )
        return ft.reduce(jnp.logical_and, answers)

    def _can_sample(self, states: list[Any]) -> Bool[Array, ""]:
        return jnp.all(jnp.stack([b._can_sample(s) for b, s in zip(self.buffers, states)]))

    @compiled_method()
    def sample(self, states: Sequence[Any], rng_key: ArrayLike) -> Any:
        """Draws `count_i` items from buffer `i` (with the `i`-th of `len(buffers)` keys
        split from `rng_key`) and concatenates them in buffer order.

        **Returns:** a sample of the buffers' kind with `sample_batch_size` items; for
        prioritised buffers its `probabilities` are the mixture's (see the module
        docstring) and `indices[offset_i : offset_i + count_i]` are buffer `i`'s handles.
        """
        where = "Mixer.sample"
        states = self._check_states(where, states)
        check_key(where, rng_key)
        keys = split(rng_key, len(self.buffers))  # pyright: ignore[reportArgumentType] # checked
        drawn = [
            buffer._draw(where, state, key, count)
            for buffer, state, key, count in zip(self.buffers, states, keys, self.counts)
            if count > 0
        ]
        samples = [sample for _, sample in drawn]
        shares = [count / self.sample_batch_size for count in self.counts if count > 0]
        if isinstance(self.buffers[0], AbstractPrioritisedBuffer):
            samples = [
                eqx.tree_at(lambda s: s.probabilities, sample, sample.probabilities * share)
                for sample, share in zip(samples, shares)
            ]
        _check_same_shape(where, samples)
        mixed = jtu.tree_map(lambda *parts: jnp.concatenate(parts, axis=0), *samples)
        # Poisoned once, as a whole, unless every buffer could be sampled (`can_sample`).
        return poison_sample(self._can_sample(states), mixed)

    @compiled_method(donates_state=True)
    def set_priorities(
        self, states: Sequence[Any], indices: ArrayLike, priorities: ArrayLike
    ) -> list[Any]:
        """Routes each buffer's slice of a mixed sample's `indices` and `priorities`
        (`[offset_i, offset_i + count_i)`) to that buffer's `set_priorities`.

        **Returns:** the states, updated, as a list.
        """
        where = "Mixer.set_priorities"
        states = self._check_states(where, states)
        if not isinstance(self.buffers[0], AbstractPrioritisedBuffer):
            raise TypeError(
                f"`{where}`: the buffers are {type(self.buffers[0]).__name__}s, which have no "
                "priorities"
            )
        indices, priorities = check_priorities(where, indices, priorities)
        if indices.shape != (self.sample_batch_size,):
            raise ValueError(
                f"`{where}`: `indices` has shape {tuple(indices.shape)}; expected "
                f"({self.sample_batch_size},), a mixed sample's indices"
            )
        new, offset = [], 0
        for buffer, state, count in zip(self.buffers, states, self.counts):
            part = slice(offset, offset + count)
            assert isinstance(buffer, AbstractPrioritisedBuffer)
            new.append(buffer._set_priorities(where, state, indices[part], priorities[part]))
            offset += count
        return new


def _check_same_shape(where: str, samples: list[Any]) -> None:
    """The buffers' samples must concatenate: one structure, one shape per item."""
    first = samples[0]
    for i, sample in enumerate(samples[1:], start=1):
        same = jtu.tree_structure(sample) == jtu.tree_structure(first) and all(
            a.shape[1:] == b.shape[1:] and a.dtype == b.dtype
            for a, b in zip(jtu.tree_leaves(sample), jtu.tree_leaves(first))
        )
        if not same:
            raise ValueError(
                f"`{where}`: the samples of buffer 0 and buffer {i} do not concatenate: "
                f"{jtu.tree_map(lambda x: (x.dtype, x.shape[1:]), first)} vs "
                f"{jtu.tree_map(lambda x: (x.dtype, x.shape[1:]), sample)} (per item); "
                "mix buffers whose samples have one shape"
            )


def make_mixer(
    buffers: Sequence[AbstractReplayBuffer],
    sample_batch_size: int,
    proportions: Sequence[float | int],
) -> Mixer:
    """Makes a `Mixer`; the arguments are those of its constructor and of Flashbax's
    `make_mixer`."""
    return Mixer(buffers=buffers, sample_batch_size=sample_batch_size, proportions=proportions)
