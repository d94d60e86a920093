"""Servers in tests: a PolicyServer in a thread (`serving`), or a `gr00t-export serve` subprocess whose "listening
on" line is waited for and whose stderr is kept (`ServerLog`)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from contextlib import contextmanager

from gr00t_export.serve import PolicyServer

SERVER_MAX_SECONDS = 300  # a safety net: no server thread outlives its test even if stop or kill is broken


@contextmanager
def serving(policy, log: list[str] | None = None, **kwargs):
    """A server on a free loopback port, run in a thread, its log lines appended to `log`; yields (server, thread),
    stopped and joined on the way out."""
    server = PolicyServer(policy, host="127.0.0.1", port=0, log=log.append if log is not None else lambda line: None,
                          **kwargs)
    thread = threading.Thread(target=server.run, kwargs={"max_seconds": SERVER_MAX_SECONDS}, daemon=True)
    thread.start()
    try:
        yield server, thread
    finally:
        server.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "server thread did not stop"


class ServerLog:
    """Every stderr line of a server process, read by a thread (select() on a buffered text pipe misses lines that
    an earlier readline already pulled into Python's buffer)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def port(self, timeout_s: float = 60.0) -> int | None:
        """The port the server printed; None if it exited or `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", line)
                if found:
                    return int(found.group(1))
            if not self._thread.is_alive():
                return None
            time.sleep(0.05)
        return None

    def text(self, timeout_s: float = 15.0) -> str:
        """All of stderr, once the process has closed it."""
        self._thread.join(timeout_s)
        return "".join(self.lines)
