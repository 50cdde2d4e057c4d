"""Runs the Python blocks of a page of the docs, as a reader would copy them."""

import contextlib
import io
import pathlib
import re


DOCS = pathlib.Path(__file__).parent.parent.parent / "docs"


def printed_by_blocks(name: str) -> list[list[str]]:
    """What each ```python block of `docs/<name>` prints, run in a fresh namespace: one
    list of lines per block."""
    page = DOCS / name
    printed = []
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(page), "exec"), {})
        printed.append(out.getvalue().splitlines())
    return printed
