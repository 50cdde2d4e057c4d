"""The README's code does what the README says."""

import pathlib
import re

import jax

import eqx_replay


README = pathlib.Path(__file__).parent.parent / "README.md"


def python_block(heading: str) -> str:
    """The first Python code block under the README's `## heading`."""
    text = README.read_text()
    section = text[text.index(f"## {heading}\n") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)  # pyright: ignore[reportOptionalMemberAccess] # the README has it


def test_composing_example_updates_the_buffer_in_place():
    namespace: dict = {}
    exec(python_block("Composing"), namespace)
    agent, batch, train_step = namespace["agent"], namespace["batch"], namespace["train_step"]
    assert int(agent.buffer_state.current_index) == 10
    # The compiled step has no copy of the buffer's storage...
    hlo = train_step.lower(batch, agent).compile().compiled.as_text()
    storage = ["f32[16,100000,4]", "f32[16,100000]"]
    copies = [
        line
        for line in hlo.splitlines()
        if " copy(" in line and any(line.split("=", 1)[-1].strip().startswith(s) for s in storage)
    ]
    assert copies == []
    # ...and each storage array is a parameter that XLA may overwrite with the result.
    header = hlo.splitlines()[0]
    layout = re.search(r"entry_computation_layout=\{\((.*?)\)->", header).group(1)  # pyright: ignore[reportOptionalMemberAccess] # always there
    parameters = re.sub(r"/\*index=\d+\*/", "", layout).split(", ")
    stored = [i for i, p in enumerate(parameters) if p.split("{")[0] in storage]
    aliased = {int(i) for i in re.findall(r"\((\d+), \{\}, may-alias\)", header)}
    assert len(stored) == 2 and set(stored) <= aliased
    # ...and it consumes the agent it is given, not the batch.
    new = train_step(batch, agent)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(agent.buffer_state))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(batch))
    assert isinstance(new.buffer_state, eqx_replay.TrajectoryBufferState)
    assert int(new.buffer_state.current_index) == 11


def test_frames_stored_once_example_builds_the_buffer_it_describes():
    namespace: dict = {}
    exec(python_block("Frames stored once"), namespace)
    buffer = namespace["buffer"]
    assert buffer.frame_stack.size == 4 and buffer.frame_stack.padding == "first"
    # 8 environments, one row each, of 125,000 steps: 1,000,000 transitions.
    assert buffer.buffer.max_length_time_axis * buffer.add_batch_size == 1_000_000
