"""Experience replay for JAX reinforcement learning, built the Equinox way."""

import importlib.metadata

from ._prioritised import (
    importance_weights as importance_weights,
    make_prioritised_trajectory_buffer as make_prioritised_trajectory_buffer,
    PrioritisedTrajectoryBuffer as PrioritisedTrajectoryBuffer,
    PrioritisedTrajectoryBufferSample as PrioritisedTrajectoryBufferSample,
    PrioritisedTrajectoryBufferState as PrioritisedTrajectoryBufferState,
)
from ._sum_tree import SumTree as SumTree
from ._trajectory import (
    make_trajectory_buffer as make_trajectory_buffer,
    StrictTrajectoryBufferState as StrictTrajectoryBufferState,
    TrajectoryBuffer as TrajectoryBuffer,
    TrajectoryBufferSample as TrajectoryBufferSample,
    TrajectoryBufferState as TrajectoryBufferState,
)


__version__ = importlib.metadata.version("eqx_replay")
