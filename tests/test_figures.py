"""The documentation's figures (docs/assets/) are drawn from the library's real behaviour by
docs/assets/make_figures.py: regenerating them gives the committed files, byte for byte, so
a figure cannot drift from what the buffers do."""

import pathlib
import subprocess
import sys

import pytest


ASSETS = pathlib.Path(__file__).parent.parent / "docs" / "assets"
FIGURES = ["boundaries.svg", "episodes.svg", "frames.png", "ring.svg", "windows.svg"]


def test_the_figures_are_what_the_library_draws_now(tmp_path: pathlib.Path) -> None:
    for module in ("matplotlib", "gymnasium", "ale_py"):  # the `test` extra has them
        pytest.importorskip(module)
    result = subprocess.run(
        [sys.executable, str(ASSETS / "make_figures.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == FIGURES
    stale = [
        name for name in FIGURES if (tmp_path / name).read_bytes() != (ASSETS / name).read_bytes()
    ]
    assert not stale, (
        f"{stale} differ from what the library draws now: run "
        "`python docs/assets/make_figures.py`, look at them, and commit them"
    )
