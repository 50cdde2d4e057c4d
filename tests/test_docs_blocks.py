"""Every ```python block of README.md and of the pages in docs/ runs as written, and prints
what the page shows it prints.

Each block runs in this process (JAX starts once for all of them) in a fresh namespace,
with a new temporary directory as the current directory. A page that says "The blocks on
this page are one program" runs its blocks in order, in one namespace and one directory.
Where the page shows what a block prints, as `# -> line` comments on its `print` lines (in
order) or as a ```text block right after it, the printed lines must be exactly those.

A block that only includes a file (`--8<-- "examples/...py"`) stands for that file. The
examples the docs include are run, and their output checked, by tests/test_examples.py and
tests/test_quickstart.py; any other included file is run here, in a process of its own.
"""

import contextlib
import dataclasses
import importlib.util
import io
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from collections.abc import Callable
from typing import Any

import jax
import pytest

import eqx_replay

from .test_examples import EXPECTED as EXAMPLES_RUN_BY_TEST_EXAMPLES


ROOT = pathlib.Path(__file__).parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
ONE_PROGRAM = "The blocks on this page are one program"

# The examples included by pages, and the test that runs each of them.
RUN_ELSEWHERE = {
    **{f"examples/{name}": "tests/test_examples.py" for name in EXAMPLES_RUN_BY_TEST_EXAMPLES},
    "examples/quickstart_trajectory_buffer.py": "tests/test_quickstart.py",
    "examples/prioritised_sequences.py": "tests/test_quickstart.py",
    "examples/episode_boundaries.py": "tests/test_quickstart.py",
}

_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"$')
_SHOWN = re.compile(r"#\s*->\s?(.*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    page: str
    number: int  # 1 for the page's first ```python block
    line: int  # the line of the page where its code starts (1-based)
    code: str
    shown: tuple[str, ...] | None  # what the page shows it prints
    includes: tuple[str, ...]  # the files it includes, if it is only includes

    def __str__(self) -> str:
        return f"{self.page}-{self.number}"


def fences(text: str) -> list[tuple[str, int, list[str], int]]:
    """(language, first line of the content, content lines, line after the fence) of every
    fenced block, content dedented by the fence's indentation."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, language, start = match.group(1), match.group(2), i + 1
        end = start
        while lines[end].strip() != "```":
            end += 1
        content = [line[len(indent) :] for line in lines[start:end]]
        found.append((language, start + 1, content, end + 1))
        i = end + 1
    return found


def blocks(page: str) -> list[Block]:
    text = (ROOT / page).read_text()
    lines, found = text.splitlines(), fences(text)
    result = []
    for k, (language, line, content, after) in enumerate(found):
        if language != "python":
            continue
        code = textwrap.dedent("\n".join(content)) + "\n"
        includes = tuple(
            match.group(1)
            for match in map(_INCLUDE.match, (c.strip() for c in content if c.strip()))
            if match is not None
        )
        if len(includes) != len([c for c in content if c.strip()]):
            includes = ()
        commented = [m.group(1).rstrip() for m in map(_SHOWN.search, content) if m is not None]
        following = found[k + 1] if k + 1 < len(found) else None
        text_after = None
        if following is not None and following[0] == "text":
            between = lines[after : following[1] - 2]
            if all(not line_.strip() for line_ in between):
                text_after = [line_.rstrip() for line_ in following[2]]
        if commented and text_after is not None:
            raise ValueError(f"{page}:{line}: shows its output twice (`# ->` and a text block)")
        shown = tuple(commented) if commented else None
        shown = tuple(text_after) if text_after is not None else shown
        result.append(Block(page, len(result) + 1, line, code, shown, includes))
    return result


BLOCKS = [block for page in PAGES for block in blocks(page)]


def run(block: Block, namespace: dict[str, Any]) -> str:
    """Runs the block's code in `namespace`; returns what it printed. Tracebacks name the
    page and its line."""
    out = io.StringIO()
    code = compile("\n" * (block.line - 1) + block.code, str(ROOT / block.page), "exec")
    with contextlib.redirect_stdout(out):
        exec(code, namespace)
    return out.getvalue()


@contextlib.contextmanager
def in_directory(path: str | os.PathLike[str]):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


_page_runs: dict[str, list[tuple[str, dict[str, Any]] | BaseException]] = {}


def run_page(page: str) -> list[tuple[str, dict[str, Any]] | BaseException]:
    """A one-program page's blocks, run once (per test process) in order in one namespace:
    each block's output and the namespace after it, or the exception it raised."""
    if page not in _page_runs:
        results: list[tuple[str, dict[str, Any]] | BaseException] = []
        namespace: dict[str, Any] = {"__name__": "__main__"}
        with tempfile.TemporaryDirectory() as directory, in_directory(directory):
            for block in blocks(page):
                if results and isinstance(results[-1], BaseException):
                    results.append(RuntimeError(f"an earlier block of {page} failed"))
                    continue
                try:
                    results.append((run(block, namespace), namespace))
                except Exception as error:
                    results.append(error)
        _page_runs[page] = results
    return _page_runs[page]


# Checks beyond what a block prints, for the blocks that make a claim the page states in
# prose: (page, a line of the block's code, check of the namespace the block leaves).
def composing_updates_the_buffer_in_place(namespace: dict[str, Any]) -> None:
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


def dqn_replay_of_frames_is_the_one_described(namespace: dict[str, Any]) -> None:
    buffer = namespace["buffer"]
    assert buffer.frame_stack.size == 4 and buffer.frame_stack.padding == "first"
    # 8 environments, one row each, of 125,000 steps: 1,000,000 transitions.
    assert buffer.buffer.max_length_time_axis * buffer.add_batch_size == 1_000_000


CHECKS: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("docs/in-place.md", "def train_step(batch, agent):", composing_updates_the_buffer_in_place),
    ("docs/frames.md", "max_length=1_000_000,", dqn_replay_of_frames_is_the_one_described),
]


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_block_runs_and_prints_what_the_page_shows(
    block: Block, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block.includes:
        for path in block.includes:
            assert (ROOT / path).is_file(), path
            if path in RUN_ELSEWHERE:
                assert pathlib.Path(path).name in (ROOT / RUN_ELSEWHERE[path]).read_text()
                continue
            result = subprocess.run(
                [sys.executable, "-W", "error", str(ROOT / path)],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=tmp_path,
            )
            assert result.returncode == 0, result.stderr[-3000:]
        return
    if ONE_PROGRAM in (ROOT / block.page).read_text():
        outcome = run_page(block.page)[block.number - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        printed, namespace = outcome
    else:
        monkeypatch.chdir(tmp_path)
        namespace = {"__name__": "__main__"}
        printed = run(block, namespace)
    if block.shown is not None:
        assert printed.splitlines() == list(block.shown)
    for page, line, check in CHECKS:
        if page == block.page and line in block.code:
            check(namespace)


def test_every_check_finds_its_block() -> None:
    for page, line, _ in CHECKS:
        assert any(b.page == page and line in b.code for b in BLOCKS), (page, line)


def test_the_changelog_and_the_site_show_the_packages_version() -> None:
    with open(ROOT / "pyproject.toml", "rb") as file:
        version = tomllib.load(file)["project"]["version"]
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert released[0] == version
    # The site's footer shows what docs/hooks.py reads from pyproject.toml.
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.version() == version


def test_the_readme_is_a_front_page() -> None:
    # At most 150 lines; everything else lives once, in docs/.
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
