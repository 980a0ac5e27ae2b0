"""Real server processes for tests: a free port on 127.0.0.1, start-until-ready, stop in a ``finally``."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(cmd: list[str], ready, log: Path, what: str, timeout: float = 120, cwd: Path | None = None) -> Iterator[None]:
    """Run ``cmd`` (in ``cwd``) until the block ends (SIGTERM, then SIGKILL); wait until ``ready()`` is true."""
    with open(log, "ab") as fh:  # appended: a server restarted on the same log keeps its first life's lines
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"},
                                cwd=cwd)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
