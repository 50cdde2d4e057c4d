"""Numpy models of the buffers' semantics, written from the logical history, that the
tests compare the buffers with."""

from .prioritised import PrioritisedReference as PrioritisedReference
from .trajectory import (
    TrajectoryReference as TrajectoryReference,
    window_mask as window_mask,
)
