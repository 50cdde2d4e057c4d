"""Experience replay for JAX reinforcement learning, built the Equinox way."""

from importlib.metadata import version as _version

from . import returns as returns
from ._base import (
    AbstractBuffer as AbstractBuffer,
    AbstractPrioritisedBuffer as AbstractPrioritisedBuffer,
    AbstractReplayBuffer as AbstractReplayBuffer,
)
from ._checkpoint import load_state as load_state, save_state as save_state
from ._flat import (
    ExperiencePair as ExperiencePair,
    FlatBuffer as FlatBuffer,
    make_flat_buffer as make_flat_buffer,
    make_prioritised_flat_buffer as make_prioritised_flat_buffer,
    PrioritisedFlatBuffer as PrioritisedFlatBuffer,
    PrioritisedTransitionSample as PrioritisedTransitionSample,
    TransitionSample as TransitionSample,
)
from ._frames import FrameStack as FrameStack, FrameStackState as FrameStackState
from ._future import FutureSample as FutureSample
from ._item import (
    ItemBuffer as ItemBuffer,
    ItemBufferSample as ItemBufferSample,
    make_item_buffer as make_item_buffer,
    make_prioritised_item_buffer as make_prioritised_item_buffer,
    PrioritisedItemBuffer as PrioritisedItemBuffer,
    PrioritisedItemBufferSample as PrioritisedItemBufferSample,
)
from ._mixer import make_mixer as make_mixer, Mixer as Mixer
from ._prioritised import (
    importance_weights as importance_weights,
    make_prioritised_trajectory_buffer as make_prioritised_trajectory_buffer,
    PrioritisedTrajectoryBuffer as PrioritisedTrajectoryBuffer,
    PrioritisedTrajectoryBufferSample as PrioritisedTrajectoryBufferSample,
    PrioritisedTrajectoryBufferState as PrioritisedTrajectoryBufferState,
)
from ._queue import (
    make_trajectory_queue as make_trajectory_queue,
    TrajectoryQueue as TrajectoryQueue,
    TrajectoryQueueSample as TrajectoryQueueSample,
    TrajectoryQueueState as TrajectoryQueueState,
)
from ._returns import (
    burn_in_split as burn_in_split,
    lambda_returns as lambda_returns,
    n_step_returns as n_step_returns,
)
from ._sum_tree import SumTree as SumTree
from ._trajectory import (
    FrameStackedTrajectoryBufferState as FrameStackedTrajectoryBufferState,
    make_trajectory_buffer as make_trajectory_buffer,
    StrictTrajectoryBufferState as StrictTrajectoryBufferState,
    TrajectoryBuffer as TrajectoryBuffer,
    TrajectoryBufferSample as TrajectoryBufferSample,
    TrajectoryBufferState as TrajectoryBufferState,
)


__version__ = _version("eqx_replay")

__all__ = [
    "AbstractBuffer",
    "AbstractPrioritisedBuffer",
    "AbstractReplayBuffer",
    "burn_in_split",
    "ExperiencePair",
    "FlatBuffer",
    "FrameStack",
    "FrameStackedTrajectoryBufferState",
    "FrameStackState",
    "FutureSample",
    "importance_weights",
    "ItemBuffer",
    "ItemBufferSample",
    "lambda_returns",
    "load_state",
    "make_flat_buffer",
    "make_item_buffer",
    "make_mixer",
    "make_prioritised_flat_buffer",
    "make_prioritised_item_buffer",
    "make_prioritised_trajectory_buffer",
    "make_trajectory_buffer",
    "make_trajectory_queue",
    "Mixer",
    "n_step_returns",
    "PrioritisedFlatBuffer",
    "PrioritisedItemBuffer",
    "PrioritisedItemBufferSample",
    "PrioritisedTrajectoryBuffer",
    "PrioritisedTrajectoryBufferSample",
    "PrioritisedTrajectoryBufferState",
    "PrioritisedTransitionSample",
    "returns",
    "save_state",
    "StrictTrajectoryBufferState",
    "SumTree",
    "TrajectoryBuffer",
    "TrajectoryBufferSample",
    "TrajectoryBufferState",
    "TrajectoryQueue",
    "TrajectoryQueueSample",
    "TrajectoryQueueState",
    "TransitionSample",
]
