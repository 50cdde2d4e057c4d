"""Returns for learners that train on sampled windows: n-step and TD(λ) targets, and the
burn-in split of recurrent learners (as `optax.losses` gathers Optax's losses).

`eqx_replay.returns.n_step_returns` and `eqx_replay.n_step_returns` are one function (the
top-level names stay for the code that already calls them); see "Returns for sequence
learners" in the docs for the conventions.
"""

from ._returns import (
    burn_in_split as burn_in_split,
    lambda_returns as lambda_returns,
    n_step_returns as n_step_returns,
)


__all__ = ["burn_in_split", "lambda_returns", "n_step_returns"]
