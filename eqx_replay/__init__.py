"""Experience replay for JAX reinforcement learning, built the Equinox way."""

import importlib.metadata

from ._trajectory import (
    make_trajectory_buffer as make_trajectory_buffer,
    TrajectoryBuffer as TrajectoryBuffer,
    TrajectoryBufferSample as TrajectoryBufferSample,
    TrajectoryBufferState as TrajectoryBufferState,
)


__version__ = importlib.metadata.version("eqx_replay")
