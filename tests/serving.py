"""Starting a `gr00t-export serve` subprocess in tests: wait for its "listening on" line, keep its stderr."""

from __future__ import annotations

import re
import subprocess
import threading
import time


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
