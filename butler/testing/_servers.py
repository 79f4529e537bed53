"""A real `butler serve` in a child process, for tests and benchmarks of remote repositories."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["ServedRepository", "served_repository"]


@dataclass(frozen=True)
class ServedRepository:
    url: str
    pid: int

    def rss_kb(self) -> int:
        """The server process's resident memory now."""
        with open(f"/proc/{self.pid}/status") as stream:
            return int(next(line for line in stream if line.startswith("VmRSS:")).split()[1])


@contextlib.contextmanager
def served_repository(root: str, *, args: Sequence[str] = (), env: dict[str, str] | None = None,
                      timeout: float = 60.0) -> Iterator[ServedRepository]:
    """Run ``butler serve root --port 0 [args]`` and yield its URL and pid (the URL read from the line
    it prints once listening: no polling); the server is stopped on exit."""
    cmd = [sys.executable, "-m", "butler.cli", "serve", root, "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        line = ""
        while not line:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise TimeoutError(f"`{' '.join(cmd)}` printed no URL within {timeout} s")
            line = proc.stdout.readline()
            if not line:  # exited
                raise RuntimeError(f"`{' '.join(cmd)}` exited ({proc.wait()}): {proc.stderr.read()}")
        selector.close()
        url = next(word for word in line.split() if word.startswith("http"))
        yield ServedRepository(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
