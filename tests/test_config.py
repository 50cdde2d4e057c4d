"""`_config`: configurations are checked when a buffer is made. Errors name the argument,
warnings match Flashbax's and point at the caller's line, int32's limits are refused."""

import re
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_replay
from eqx_replay._config import INT32_MAX, MIN_GENERATIONS

from .helpers import seed_buffer
from .helpers.small_buffer import batch, config, EXAMPLE, PERIOD


CONFIG_ERRORS = [
    (dict(add_batch_size=0), ValueError, "`add_batch_size` must be >= 1; got 0"),
    (
        dict(sample_batch_size=-1),
        ValueError,
        "`sample_batch_size` must be >= 1; got -1",
    ),
    (
        dict(sample_sequence_length=0),
        ValueError,
        "`sample_sequence_length` must be >= 1",
    ),
    (dict(period=0), ValueError, "`period` must be >= 1; got 0"),
    (dict(min_length_time_axis=-2), ValueError, "`min_length_time_axis` must be >= 0"),
    (dict(max_length_time_axis=0), ValueError, "`max_length_time_axis` must be >= 1"),
    (dict(period=1.5), TypeError, "`period` must be an int; got float 1.5"),
    (
        dict(add_batch_size=True),
        TypeError,
        "`add_batch_size` must be an int; got the bool",
    ),
    (
        dict(sample_sequence_length=40, min_length_time_axis=40),
        ValueError,
        "`sample_sequence_length` (40) must be <= the time axis (32 steps per row)",
    ),
    (
        dict(min_length_time_axis=33),
        ValueError,
        "`min_length_time_axis` (33) must be <= the time axis (32 steps per row)",
    ),
    (dict(max_size=192), ValueError, "give exactly one of `max_size`"),
    (
        dict(max_length_time_axis=None),
        ValueError,
        "give exactly one of `max_size` (steps in the whole buffer) and "
        "`max_length_time_axis` (steps per row); got neither",
    ),
    (
        dict(max_length_time_axis=None, max_size=5),
        ValueError,
        "`max_size` (5) must be at least `add_batch_size` (6)",
    ),
    (dict(donate_state="yes"), TypeError, "`donate_state` must be a bool"),
]


@pytest.mark.parametrize("overrides,error,message", CONFIG_ERRORS)
def test_config_errors_name_the_argument(overrides, error, message):
    with pytest.raises(error) as info:
        seed_buffer(**overrides)
    if error is TypeError and "Type-check error" in str(info.value):
        # Under jaxtyping's import hook beartype checks the annotation `int` first; its
        # message names the parameter too.
        (name,) = overrides
        assert f"parameter '{name}'" in str(info.value)
    else:
        assert message in str(info.value)


def test_config_warnings():
    with pytest.warns(UserWarning, match="raising it to 8"):
        buffer = seed_buffer(min_length_time_axis=4)
    assert buffer.min_length_time_axis == 8
    with pytest.warns(UserWarning, match=re.escape("`period` (10) is greater than")):
        seed_buffer(period=10)
    with pytest.warns(UserWarning, match="not a multiple of `add_batch_size`"):
        buffer = seed_buffer(max_length_time_axis=None, max_size=200)
    assert buffer.max_length_time_axis == 33
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seed_buffer(max_length_time_axis=None, max_size=192).max_length_time_axis == 32


def test_index_limits_are_refused_at_construction():
    with pytest.raises(ValueError, match=re.escape("at most 1073741823 are allowed")):
        eqx_replay.make_trajectory_buffer(**config(max_length_time_axis=1_200_000_000))
    with pytest.raises(ValueError, match=r"is 1100000000 steps per row; at most 1073741823"):
        eqx_replay.make_trajectory_buffer(
            **config(max_length_time_axis=None, max_size=2 * 1_100_000_000)
        )
    with pytest.raises(ValueError, match=r"800000000 steps per row; at most 536870911"):
        eqx_replay.make_prioritised_trajectory_buffer(**config(max_length_time_axis=800_000_000))
    limit = INT32_MAX // MIN_GENERATIONS
    with pytest.raises(ValueError, match=f"has 200000000 windows .*; at most {limit}"):
        eqx_replay.make_prioritised_trajectory_buffer(**config(max_length_time_axis=200_000_000))
    with pytest.raises(ValueError, match=f"at most {INT32_MAX // 2} are allowed"):
        eqx_replay.make_trajectory_buffer(
            **config(max_length_time_axis=536_870_910, add_batch_size=3, period=1),
            episode_end=lambda step: step["done"],
            boundary="strict",
        )
    # The largest configurations allowed are made without allocating anything, and they
    # are the ones whose arithmetic the next two tests check: one step more is refused.
    strict = dict(episode_end=lambda step: step["done"], boundary="strict")
    for make, capacity, extra in [
        (eqx_replay.make_trajectory_buffer, INT32_MAX // 2, {}),
        (eqx_replay.make_trajectory_buffer, INT32_MAX // 4, strict),
    ]:
        make(**config(max_length_time_axis=capacity, add_batch_size=1, period=1), **extra)
        with pytest.raises(ValueError, match="at most"):
            make(**config(max_length_time_axis=capacity + 1, add_batch_size=1, period=1), **extra)
    eqx_replay.make_prioritised_trajectory_buffer(
        **config(max_length_time_axis=limit - limit % PERIOD, add_batch_size=1)
    )


class EpisodeEnd(eqx.Module):
    threshold: jax.Array

    def __call__(self, step):
        return step["obs"][..., 0] > self.threshold


def test_an_unhashable_episode_end_is_refused_at_construction():
    message = (
        "`episode_end` is a static field of the buffer, so it must be hashable; got "
        "EpisodeEnd(...) with array leaves .threshold"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        eqx_replay.make_trajectory_buffer(
            **config(), episode_end=EpisodeEnd(jnp.array(0.5)), boundary="mask"
        )
    # Closing over the array works.
    end = EpisodeEnd(jnp.array(0.5))
    buffer = eqx_replay.make_trajectory_buffer(
        **config(), episode_end=lambda step: end(step), boundary="mask"
    )
    state = buffer.add(buffer.init(EXAMPLE), batch(4))
    assert buffer.sample(state, jr.key(0)).mask is not None


def test_numpy_numbers_are_accepted_as_exponents():
    for exponent in (np.float32(0.5), np.float64(0.5), np.int64(1), 1):
        buffer = eqx_replay.make_prioritised_trajectory_buffer(
            **config(), priority_exponent=exponent
        )
        assert buffer.priority_exponent == float(exponent)
    # A bool is refused; under this run's import hook by the annotation, which names the
    # parameter too.
    with pytest.raises(
        TypeError,
        match="(`priority_exponent` must be a float; got bool_)|(parameter 'priority_exponent')",
    ):
        eqx_replay.make_prioritised_trajectory_buffer(**config(), priority_exponent=np.bool_(True))  # pyright: ignore[reportArgumentType] # the point


def test_exponents_beyond_float32_are_refused():
    with pytest.raises(ValueError, match="must be finite in float32 and >= 0; got 1e"):
        eqx_replay.make_prioritised_trajectory_buffer(**config(), priority_exponent=1e39)


def test_configuration_warnings_name_the_callers_line():
    for make in (
        eqx_replay.make_trajectory_buffer,
        eqx_replay.TrajectoryBuffer,
        eqx_replay.make_prioritised_trajectory_buffer,
        eqx_replay.PrioritisedTrajectoryBuffer,
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make(**config(min_length_time_axis=1, period=3))
        assert caught, make
        assert {w.filename for w in caught} == {__file__}, [w.filename for w in caught]


def test_warnings_of_a_replaced_buffer_name_the_callers_line():
    import dataclasses

    buffer = eqx_replay.make_trajectory_buffer(**config())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataclasses.replace(buffer, min_length_time_axis=1)
    assert caught and {w.filename for w in caught} == {__file__}
