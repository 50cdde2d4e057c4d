"""Sharded buffers on 8 fake CPU devices (`sharding_checks.py`, run once in a process of its
own so that this process keeps the 2 devices of the pmap tests)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


SCRIPT = Path(__file__).with_name("sharding_checks.py")
# Read, not imported: importing it would give this process 8 devices.
CHECKS = re.findall(r"^def (check_\w+)", SCRIPT.read_text(), flags=re.MULTILINE)


@pytest.fixture(scope="module")
def results() -> dict[str, str | None]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("check", CHECKS)
def test_sharded(results: dict[str, str | None], check: str) -> None:
    failure = results[check]
    assert failure is None, failure
