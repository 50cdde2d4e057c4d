"""The Vault: Flashbax's format both ways, every added step written exactly once (decided
from the write head, never from the data), losses named, names used as given and kept
inside `rel_dir`, failed creations leaving nothing, damaged metadata named, ranges and
streams, exact restore of a buffer's state, and writers killed at any moment leaving whole
writes."""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import warnings
import weakref
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_replay
from eqx_replay.vault import Vault

from .helpers import tree_allclose


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import flashbax
    from flashbax.vault import Vault as FlashbaxVault


class Inner(NamedTuple):
    reward: jax.Array
    done: jax.Array


class Step(NamedTuple):
    obs: jax.Array
    info: Inner
    extras: dict


EXAMPLE = Step(
    obs=jnp.zeros((2, 3), jnp.float32),
    info=Inner(reward=jnp.float32(0), done=jnp.bool_(False)),
    extras={"id": jnp.int32(0), "mask": jnp.zeros(4, jnp.uint8)},
)
ROWS, CAPACITY = 3, 8


def numbered(start: int, t: int, rows: int = ROWS) -> Step:
    """`t` steps of each row from stream step `start`: row r of step s holds s * 10 + r."""
    ids = (start + jnp.arange(t))[None, :] * 10 + jnp.arange(rows)[:, None]
    return Step(
        obs=jnp.broadcast_to(ids[..., None, None], (rows, t, 2, 3)).astype(jnp.float32),
        info=Inner(reward=ids * 0.5, done=ids % 3 == 0),
        extras={"id": ids.astype(jnp.int32), "mask": (ids[..., None] + jnp.arange(4)) % 256},
    )


def numbered_u8(start: int, t: int, rows: int = ROWS) -> Step:
    step = numbered(start, t, rows)
    return step._replace(extras={**step.extras, "mask": step.extras["mask"].astype(jnp.uint8)})


def trajectory_buffer(capacity: int = CAPACITY, module: Any = eqx_replay) -> Any:
    return module.make_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=2,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_length_time_axis=capacity,
    )


@pytest.fixture
def here(tmp_path: pathlib.Path) -> Any:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def _ids(experience: Any) -> np.ndarray:
    return np.asarray(experience.extras["id"] if hasattr(experience, "extras") else experience)


def test_steps_added_between_writes_are_written_exactly_once(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.init(EXAMPLE)
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    rng = random.Random(0)
    added = asked = 0
    # Write after 1..CAPACITY steps: no wrap, wraps, and an exactly full buffer (#66).
    for _ in range(40):
        was_full = bool(state.is_full)
        for t in _split(rng.randint(1, CAPACITY), rng):
            state = buffer.add(state, numbered_u8(added, t))
            added += t
        new = added - vault.vault_index
        if was_full and new == CAPACITY:
            # Full before and after, the head where it was: 0 steps or a whole capacity?
            # The state cannot tell; the caller's count can.
            with pytest.raises(ValueError, match=r"Pass the steps added since the last write"):
                vault.write(state)
            assert vault.write(state, added=new) == new
            asked += 1
        else:
            assert vault.write(state) == new
        assert vault.write(state) == 0  # The very same state: nothing was added to it.
        assert vault.write(state, added=0) == 0
    assert asked > 0
    assert vault.vault_index == added
    ids = np.asarray(vault.read().experience.extras["id"])
    np.testing.assert_array_equal(ids, np.arange(added)[None, :] * 10 + np.arange(ROWS)[:, None])


def _split(n: int, rng: random.Random) -> list[int]:
    parts = []
    while n:
        parts.append(rng.randint(1, n))
        n -= parts[-1]
    return parts


def test_the_first_write_of_an_exactly_full_buffer_writes_it_all(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, CAPACITY))
    assert int(state.current_index) == 0 and bool(state.is_full)
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    assert vault.write(state) == CAPACITY  # Flashbax writes 0 here.


def test_overwritten_steps_are_an_error_naming_them(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.init(EXAMPLE)
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    state = buffer.add(state, numbered_u8(0, 5))
    vault.write(state)
    # The buffer filled up and its head passed the last write's: the state shows the loss.
    state = buffer.add(state, numbered_u8(5, CAPACITY))
    state = buffer.add(state, numbered_u8(5 + CAPACITY, 2))
    with pytest.raises(ValueError, match=r"at least 2 steps of every row \(vault steps 5 to 6 or"):
        vault.write(state)
    assert vault.vault_index == 5
    assert vault.write(state, skip_lost=True) == CAPACITY
    # Several whole wraps after a full buffer leave no trace in the state (the data is not
    # looked at): the caller's count of steps added names the loss.
    for i in range(3):
        state = buffer.add(state, numbered_u8(100 + i * CAPACITY, CAPACITY))
    state = buffer.add(state, numbered_u8(200, 2))
    lost, at = 3 * CAPACITY + 2 - CAPACITY, 5 + CAPACITY
    with pytest.raises(
        ValueError, match=rf"at least {lost} steps of every row \(vault steps {at} "
    ):
        vault.write(state, added=3 * CAPACITY + 2)
    reread = Vault("v", vault_uid="a")
    assert reread.vault_index == 5 + CAPACITY
    ids = np.asarray(reread.read().experience["extras"]["id"])
    expected = np.array([*range(5), *range(7, 7 + CAPACITY)])
    np.testing.assert_array_equal(ids, expected[None, :] * 10 + np.arange(ROWS)[:, None])


def test_steps_counted_by_the_caller_find_every_loss(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 5))
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    assert vault.write(state, added=5) == 5
    # Two whole wraps leave the write head where it was: without `added` that reads as one
    # capacity's worth (documented); with it, the lost steps are named.
    for i in range(2):
        state = buffer.add(state, numbered_u8(5 + i * CAPACITY, CAPACITY))
    lost = rf"at least {CAPACITY} steps of every row \(vault steps 5 to {4 + CAPACITY} or more\)"
    with pytest.raises(ValueError, match=lost):
        vault.write(state, added=2 * CAPACITY)
    assert vault.vault_index == 5
    with pytest.raises(ValueError, match=r"`added` \(3\) does not match the buffer's write head"):
        vault.write(state, added=3)
    # The buffer filled up since the last write: at least a whole capacity was added.
    with pytest.raises(ValueError, match=r"`added` \(0\) does not match .* shows 8 steps added"):
        vault.write(state, added=0)
    with pytest.raises(ValueError, match=r"`added` must be an int >= 0; got -1"):
        vault.write(state, added=-1)
    assert vault.write(state, added=2 * CAPACITY, skip_lost=True) == CAPACITY
    state = buffer.add(state, numbered_u8(5 + 2 * CAPACITY, 3))
    assert vault.write(state, added=3) == 3
    ids = np.asarray(vault.read().experience.extras["id"])
    expected = np.array([*range(5), *range(5 + CAPACITY, 5 + 2 * CAPACITY + 3)])
    np.testing.assert_array_equal(ids, expected[None, :] * 10 + np.arange(ROWS)[:, None])


def test_a_buffer_moved_by_exactly_its_capacity_is_never_written_as_nothing(here: Any) -> None:
    """Issue 21, item 3: constant observations, and the step before the write head holds the
    same bytes as at the last write. The vault may not keep [1, 2, 3, 4] as if nothing
    was added."""
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=1,
        sample_batch_size=1,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_length_time_axis=4,
    )
    example = {"obs": jnp.zeros(3, jnp.float32), "step": jnp.int32(0)}

    def steps(ids: list[int]) -> dict[str, jax.Array]:
        return {"obs": jnp.ones((1, len(ids), 3)), "step": jnp.array([ids], jnp.int32)}

    state = buffer.add(buffer.init(example), steps([1, 2, 3, 4]))
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    assert vault.write(state) == 4
    state = buffer.add(state, steps([5, 6, 7, 4]))
    with pytest.raises(ValueError, match=r"`Vault.write`: the buffer is full and its write head"):
        vault.write(state)
    with pytest.raises(ValueError, match=r"`added=0` if none"):
        vault.write(state, skip_lost=True)
    assert vault.vault_index == 4 and Vault("v", vault_uid="a").vault_index == 4
    # A copy of the state is no proof that nothing was added; the caller's count is.
    assert vault.write(state, added=4) == 4
    with pytest.raises(ValueError, match=r"the state cannot show whether 0 steps"):
        vault.write(jax.tree.map(jnp.copy, state))
    assert vault.write(state) == 0
    np.testing.assert_array_equal(vault.read().experience["step"], [[1, 2, 3, 4, 5, 6, 7, 4]])
    assert tree_allclose(vault.read().experience["obs"], jnp.ones((1, 8, 3)))
    # What lets the vault recognise the same state keeps no buffer alive.
    leaf = weakref.ref(state.experience["obs"])
    del state
    assert leaf() is None


def test_a_queue_is_written_as_its_write_head_moves_round(here: Any) -> None:
    # A queue's `is_full` says every step is unread, not that its ring wrapped: its head
    # goes round as it is read, and each write appends what it moved.
    queue = eqx_replay.make_trajectory_queue(
        max_length_time_axis=CAPACITY,
        add_batch_size=ROWS,
        add_sequence_length=3,
        sample_sequence_length=3,
    )
    state = queue.init(EXAMPLE)
    vault = Vault("q", experience_structure=state.experience, vault_uid="a")
    step = 0
    for _ in range(5):  # 15 steps: the head goes round the ring of 8 once
        state = queue.add(state, numbered_u8(step, 3))
        step += 3
        state, _ = queue.sample(state)
        assert vault.write(state) == 3
    np.testing.assert_array_equal(_ids(vault.read().experience), _ids(numbered_u8(0, step)))
    # Exactly a ring's worth between writes leaves the head where it was: `added` decides.
    for _ in range(2):
        state = queue.add(state, numbered_u8(step, 4))
        step += 4
        state, _ = queue.sample(state)
        state, _ = queue.sample(state)
    with pytest.raises(ValueError, match=r"the state is a trajectory queue's and its write head"):
        vault.write(state)
    assert vault.write(state, added=CAPACITY) == CAPACITY
    np.testing.assert_array_equal(_ids(vault.read().experience), _ids(numbered_u8(0, step)))


def test_a_state_that_is_not_a_continuation_is_refused(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 5))
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    vault.write(state)
    fresh = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 2))
    with pytest.raises(ValueError, match=r"holds fewer steps than at the last write"):
        vault.write(fresh)


def test_flashbax_reads_what_we_write_and_we_read_what_it_writes(here: Any) -> None:
    ours = trajectory_buffer()
    theirs = trajectory_buffer(module=flashbax)
    ours_state, their_state = ours.init(EXAMPLE), theirs.init(EXAMPLE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours_vault = Vault("ours", experience_structure=ours_state.experience, vault_uid="x")
        their_vault = FlashbaxVault(
            "theirs", experience_structure=their_state.experience, vault_uid="x"
        )
        # Ours also writes Flashbax's state, as it writes ours.
        from_theirs = Vault("from theirs", experience_structure=their_state.experience)
        for i in range(5):
            ours_state = ours.add(ours_state, numbered_u8(3 * i, 3))
            their_state = theirs.add(their_state, numbered_u8(3 * i, 3))
            ours_vault.write(ours_state)
            their_vault.write(their_state)
            assert from_theirs.write(their_state) == 3
        expected = numbered_u8(0, 15)
        # Flashbax reading ours, with and without the structure.
        read = FlashbaxVault("ours", experience_structure=ours_state.experience, vault_uid="x")
        assert tree_allclose(read.read().experience, expected)
        as_dicts = FlashbaxVault("ours", vault_uid="x").read().experience
        assert tree_allclose(as_dicts["extras"]["id"], expected.extras["id"])
        assert tree_allclose(as_dicts["info"]["done"], expected.info.done)
    assert tree_allclose(from_theirs.read().experience, expected)
    # Ours reading Flashbax's, with and without the structure.
    read = Vault("theirs", experience_structure=their_state.experience, vault_uid="x")
    assert read.vault_index == 15
    assert tree_allclose(read.read().experience, expected)
    as_dicts = Vault("theirs", vault_uid="x").read().experience
    assert tree_allclose(as_dicts["obs"], expected.obs)
    assert tree_allclose(as_dicts["extras"]["mask"], expected.extras["mask"])
    # The same metadata, leaf for leaf.
    ours_meta = json.loads((here / "vaults/ours/x/metadata.json").read_text())
    their_meta = json.loads((here / "vaults/theirs/x/metadata.json").read_text())
    assert ours_meta == their_meta


def _tree(root: pathlib.Path) -> list[str]:
    """Every file and directory under `root`, relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "name, uid",
    [
        ("%41", "%2F..%2F..%2Fescape"),
        ("a%2F..%2F..%2Fescape", "u"),
        ("with space", "ü ñ 字"),
        ("nested/name", "%25%"),
        ("a/../b", "file%3A%2F%2Fx"),
        ("q?x#y", "%00"),
    ],
)
def test_names_are_used_as_given(here: Any, name: str, uid: str) -> None:
    """Issue 21, item 4: a percent escape is three characters; the vault lands exactly at
    `<cwd>/<rel_dir>/<vault_name>/<vault_uid>`, nothing is written elsewhere, and it reopens."""
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 5))
    vault = Vault(name, experience_structure=state.experience, vault_uid=uid)
    assert vault.write(state) == 5
    where = pathlib.Path(os.path.normpath(here / "vaults" / name / uid))
    assert (where / "metadata.json").is_file() and (where / "manifest.ocdbt").is_file()
    outside = [p for p in _tree(here) if not (here / p).resolve().is_relative_to(where)]
    parents = [d for d in where.parents if d.is_relative_to(here) and d != here]
    assert set(outside) == {str(d.relative_to(here)) for d in parents}
    reopened = Vault(name, vault_uid=uid)
    assert reopened.vault_index == 5
    assert tree_allclose(reopened.read().experience["extras"]["id"], numbered_u8(0, 5).extras["id"])


@pytest.mark.parametrize(
    "name, uid, argument",
    [
        ("..", "a", "vault_name"),
        ("../x", "a", "vault_name"),
        ("a/../..", "a", "vault_name"),
        (".", "a", "vault_name"),
        ("<absolute>", "a", "vault_name"),
        ("v", "..", "vault_uid"),
        ("v", "../w", "vault_uid"),
        ("v", ".", "vault_uid"),
        ("v", "<absolute>", "vault_uid"),
        ("v", "../../x", "vault_uid"),
    ],
)
def test_names_that_leave_their_directory_are_refused(
    here: Any, name: str, uid: str, argument: str
) -> None:
    name, uid = (str(here / "elsewhere") if n == "<absolute>" else n for n in (name, uid))
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 5))
    Vault("w", experience_structure=state.experience, vault_uid="a").write(state)
    before = _tree(here)
    refused = rf"`Vault.__init__`: `{argument}` must name a directory inside .*; got '"
    with pytest.raises(ValueError, match=refused):
        Vault(name, experience_structure=state.experience, vault_uid=uid)
    with pytest.raises(ValueError, match=refused):
        Vault(name, vault_uid=uid)
    assert _tree(here) == before
    assert Vault("w", vault_uid="a").vault_index == 5


def test_rel_dir_is_the_base_relative_or_absolute(here: Any) -> None:
    """`rel_dir` is the user's choice of base (Flashbax's `os.path.join` makes an absolute
    one work too); only the names are kept inside it."""
    (here / "work").mkdir()
    os.chdir(here / "work")
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 5))
    for rel_dir, where in [
        ("../data", here / "data/v/a"),
        (str(here / "abs"), here / "abs/v/a"),
        (here / "path%41", here / "path%41/v/a"),
    ]:
        Vault("v", experience_structure=state.experience, rel_dir=rel_dir, vault_uid="a").write(
            state
        )
        assert (where / "metadata.json").is_file()
        assert Vault("v", rel_dir=rel_dir, vault_uid="a").vault_index == 5
    assert _tree(here / "work") == []


def test_a_failed_creation_leaves_nothing_behind(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 5))
    failed = r"`Vault.__init__`: could not create the vault at .*/vaults/v/b \("
    with pytest.raises(ValueError, match=failed + r".*compressor"):
        Vault("v", experience_structure=state.experience, vault_uid="b", compression={"id": "?"})
    assert _tree(here) == []
    # A dtype that zarr cannot store, after another leaf's array was made.
    odd = {"a": jnp.zeros((ROWS, CAPACITY)), "b": jax.ShapeDtypeStruct((ROWS, CAPACITY), "uint2")}
    with pytest.raises(ValueError, match=failed + r".*uint2"):
        Vault("v", experience_structure=odd, vault_uid="b")
    assert _tree(here) == []
    # Directories that were there before stay, with the vaults in them.
    Vault("v", experience_structure=state.experience, vault_uid="a").write(state)
    before = _tree(here)
    with pytest.raises(ValueError, match=failed):
        Vault("v", experience_structure=odd, vault_uid="b")
    assert _tree(here) == before
    assert Vault("v", vault_uid="a").vault_index == 5
    # A parent that is a file: nothing could be made.
    (here / "file").write_text("")
    with pytest.raises(ValueError, match=r"could not create the vault at .*/file/vaults/v/a"):
        Vault("v", experience_structure=state.experience, rel_dir="file/vaults", vault_uid="a")
    assert _tree(here) == sorted([*before, "file"])
    # A name too long for the file system: the directories made for it go as well.
    with pytest.raises(ValueError, match=r"could not create the vault at .*/deep/vaults/n{300}"):
        Vault("n" * 300, experience_structure=state.experience, rel_dir="deep/vaults")
    assert _tree(here) == sorted([*before, "file"])


def test_metadata_is_kept_and_its_reserved_keys_are_refused(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 5))
    extra = {"env": "CartPole", "seed": 3, "nested": {"lr": 0.1, "shape": (2, 3)}}
    Vault("v", experience_structure=state.experience, vault_uid="a", metadata=extra).write(state)
    saved = json.loads((here / "vaults/v/a/metadata.json").read_text())
    assert {k: saved[k] for k in extra} == {
        "env": "CartPole",
        "seed": 3,
        "nested": {"lr": 0.1, "shape": [2, 3]},
    }
    before = (here / "vaults/v/a/metadata.json").read_text(), _tree(here)
    for key in ["version", "structure_shape", "structure_dtype"]:
        reserved = rf"`Vault.__init__`: `metadata` may not set \['{key}'\]: the vault writes"
        for uid in ["a", "b"]:
            with pytest.raises(ValueError, match=reserved):
                Vault("v", state.experience, vault_uid=uid, metadata={key: 2, "x": 1})
    with pytest.raises(ValueError, match=r"`Vault.__init__`: `metadata` cannot be stored as JSON"):
        Vault("v", state.experience, vault_uid="b", metadata={(1, 2): 3})
    assert ((here / "vaults/v/a/metadata.json").read_text(), _tree(here)) == before
    assert Vault("v", vault_uid="a").vault_index == 5


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: "not json", r"metadata.json is missing or not JSON"),
        (lambda m: [1, 2], r"metadata.json holds a JSON list; expected an object"),
        (
            lambda m: _drop(m, "structure_dtype"),
            r"metadata.json has no 'structure_dtype': not a vault",
        ),
        (
            lambda m: {**m, "version": "1.2"},
            r"metadata.json has 'version' '1.2'; expected a number",
        ),
        (lambda m: {**m, "version": 2.0}, r"metadata.json is a version 2.0 vault; this reads"),
        (
            lambda m: _set(m, "structure_shape", "obs", "(3, time, 2, 3)"),
            r"metadata.json: leaf obs has shape '\(3, time, 2, 3\)'; expected a tuple",
        ),
        (
            lambda m: _set(m, "structure_shape", "obs", "[3, 8, 2, 3]"),
            r"leaf obs has shape '\[3, 8, 2, 3\]'; expected a tuple of at least two ints",
        ),
        (
            lambda m: _set(m, "structure_shape", "obs", "(3,)"),
            r"leaf obs has shape '\(3,\)'; expected a tuple of at least two",
        ),
        (
            lambda m: _set(m, "structure_shape", "obs", 5),
            r"metadata.json: 'structure_shape' has 5 for leaf 'obs'; expected a string",
        ),
        (
            lambda m: _set(m, "structure_dtype", "obs", "float33"),
            r"metadata.json: leaf obs has dtype 'float33'; expected a dtype name",
        ),
        (
            lambda m: _set(m, "structure_dtype", "obs", None),
            r"metadata.json: 'structure_shape' has leaves .* and 'structure_dtype' has .*; "
            "expected the same leaves",
        ),
        (
            lambda m: {**m, "structure_shape": {}, "structure_dtype": {}},
            r"metadata.json describes no leaves",
        ),
        (
            lambda m: _set(m, "structure_dtype", "obs", "float64"),
            r"the vault at .*/vaults/v/a has array 'obs.' of float32\[3, 10000000000000, 2, 3\]; "
            r"metadata.json says float64\[3, 8, 2, 3\]",
        ),
        (
            lambda m: _set(m, "structure_shape", "obs", "(3, 8, 2, 4)"),
            r"has array 'obs.' of float32\[3, 10000000000000, 2, 3\]; "
            r"metadata.json says float32\[3, 8, 2, 4\]",
        ),
        (
            lambda m: _set(
                _set(m, "structure_shape", "other", "(3, 8)"), "structure_dtype", "other", "int32"
            ),
            r"the vault at .*/vaults/v/a has no array 'other.' \(NOT_FOUND",
        ),
    ],
)
def test_a_malformed_metadata_json_is_named(here: Any, change: Any, message: str) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 5))
    Vault("v", experience_structure=state.experience, vault_uid="a").write(state)
    path = here / "vaults/v/a/metadata.json"
    good = path.read_text()
    changed = change(json.loads(good))
    path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(ValueError, match=rf"`Vault.__init__`: .*{message}"):
        Vault("v", vault_uid="a")
    path.write_text(good)
    assert Vault("v", vault_uid="a").vault_index == 5


def _set(metadata: dict, key: str, leaf: str, value: Any) -> dict:
    metadata[key][leaf] = value
    return metadata


def _drop(metadata: dict, key: str) -> dict:
    return {k: v for k, v in metadata.items() if k != key}


def test_reading_ranges_streams_and_restoring_a_state(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.init(EXAMPLE)
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    for i in range(9):
        state = buffer.add(state, numbered_u8(3 * i, 3))
        vault.write(state)
    everything = numbered_u8(0, 27)
    cut = lambda a, b: jax.tree.map(lambda x: x[:, a:b], everything)  # noqa: E731
    assert tree_allclose(vault.read(timesteps=5).experience, cut(22, 27))
    assert tree_allclose(vault.read(percentiles=(20, 60)).experience, cut(5, 16))
    assert tree_allclose(vault.read_range(4, 9), cut(4, 9))
    pieces = list(vault.chunks(10, start=2))
    assert [_ids(p).shape[1] for p in pieces] == [10, 10, 5]
    assert tree_allclose(jax.tree.map(lambda *x: jnp.concatenate(x, 1), *pieces), cut(2, 27))
    # The buffer the vault was written from, exactly; and a fresh one continues it.
    restored = vault.to_state(buffer, EXAMPLE)
    assert tree_allclose(restored, state)
    key = jax.random.key(0)
    assert tree_allclose(buffer.sample(restored, key), buffer.sample(state, key))
    bigger = trajectory_buffer(capacity=40)
    restored = vault.to_state(bigger, EXAMPLE)
    assert int(restored.current_index) == 27 and not bool(restored.is_full)
    assert tree_allclose(jax.tree.map(lambda x: x[:, :27], restored.experience), everything)


def test_bad_inputs_are_clear_errors(here: Any) -> None:
    buffer = trajectory_buffer()
    state = buffer.add(buffer.init(EXAMPLE), numbered_u8(0, 4))
    with pytest.raises(ValueError, match=r"there is no vault at .*no `experience_structure`"):
        Vault("missing", vault_uid="a")
    vault = Vault("v", experience_structure=state.experience, vault_uid="a")
    vault.write(state)
    other = {"obs": jnp.zeros((ROWS, 4, 2, 3))}
    with pytest.raises(ValueError, match=r"the experience has leaves \['obs.'\]; the vault stores"):
        Vault("v", experience_structure=other, vault_uid="a")
    wrong = jax.tree.map(lambda x: x, state.experience)
    wrong = wrong._replace(obs=jnp.zeros((ROWS, CAPACITY, 2, 4)))
    with pytest.raises(ValueError, match=r"leaf obs is float32\[3, 8, 2, 4\]; the vault stores "):
        Vault("v", experience_structure=wrong, vault_uid="a")
    with pytest.raises(ValueError, match=r"`Vault.write`: expected a buffer state"):
        vault.write(state.experience)
    other_rows = trajectory_buffer().init(EXAMPLE)
    other_rows = other_rows.__class__(
        experience=jax.tree.map(lambda x: x[:2], other_rows.experience),
        current_index=other_rows.current_index,
        is_full=other_rows.is_full,
    )
    with pytest.raises(ValueError, match=r"state leaf obs is float32\[2, 8, 2, 3\]; the vault"):
        vault.write(other_rows)
    with pytest.raises(ValueError, match=r"`timesteps` must be in \[0, 4\]; got 5"):
        vault.read(timesteps=5)
    with pytest.raises(ValueError, match=r"`percentiles` must be ascending"):
        vault.read(percentiles=(60, 20))
    with pytest.raises(ValueError, match=r"steps \[2, 9\) are not within the vault's \[0, 4\)"):
        vault.read_range(2, 9)
    with pytest.raises(ValueError, match=r"`steps` must be >= 1; got 0"):
        next(vault.chunks(0))
    prioritised = eqx_replay.make_prioritised_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=2,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_length_time_axis=CAPACITY,
    )
    with pytest.raises(ValueError, match=r"PrioritisedTrajectoryBufferState; a vault holds only"):
        vault.to_state(prioritised, EXAMPLE)
    (here / "vaults/v/broken").mkdir()
    with pytest.raises(ValueError, match=r"metadata.json is missing or not JSON"):
        Vault("v", vault_uid="broken")
    assert vault.vault_index == 4 and Vault("v", vault_uid="a").vault_index == 4


def test_a_writer_killed_at_any_moment_leaves_every_completed_write(tmp_path: Any) -> None:
    writer = pathlib.Path(__file__).with_name("vault_writer.py")
    rng = random.Random(1)
    completed = 0
    for run in range(5):
        child = subprocess.Popen(
            [sys.executable, str(writer), str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        deadline = time.monotonic() + 120
        if run == 0:
            time.sleep(rng.uniform(0.5, 3.0))  # Perhaps while the vault is being made.
        else:
            for _ in range(rng.randint(1, 30)):
                line = child.stdout.readline()
                assert line, "the writer stopped by itself"
                completed = max(completed, int(line))
                assert time.monotonic() < deadline
            time.sleep(rng.uniform(0, 0.05))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=60)
        completed = max([completed, *map(int, rest.split())])
        if not (tmp_path / "vaults/crash/run").exists():
            assert completed == 0
            continue
        vault = Vault("crash", vault_uid="run", rel_dir=str(tmp_path / "vaults"))
        assert vault.vault_index >= completed
        ids = np.asarray(vault.read().experience["step"])
        expected = np.arange(vault.vault_index)[None, :] * 10 + np.arange(2)[:, None]
        np.testing.assert_array_equal(ids, expected)
        obs = np.asarray(vault.read_range(0, vault.vault_index)["obs"])
        np.testing.assert_array_equal(obs, np.broadcast_to(expected[..., None], obs.shape))
        completed = vault.vault_index
    assert completed > 0
