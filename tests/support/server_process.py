"""Run a real tusfast server process for black-box tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

_LISTENING = re.compile(r"listening on (\S+)")
START_TIMEOUT = 20.0


class ServerProcess:
    """`python -m tusfast serve` on 127.0.0.1 with an OS-chosen port.

    The server logs `listening on <collection URL>` once it accepts connections; that line
    tells us the port. Stderr is kept so a failing test can show the server's log.
    """

    own_group = False   # lead a process group of its own (so its --workers can be killed with it)

    def __init__(self, upload_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.upload_dir = upload_dir
        self.args = list(args)
        self.env = env or {}
        self.url = ""
        self.port = 0
        self.log: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, port: int | None = None) -> "ServerProcess":
        port = self.port if port is None else port
        cmd = [sys.executable, "-m", "tusfast", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--upload-dir", str(self.upload_dir), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      text=True, env=env, start_new_session=self.own_group)
        self.url = self._wait_for_url(self._proc)
        self.port = int(re.sub(r".*:(\d+)/.*", r"\1", self.url))
        return self

    def _wait_for_url(self, proc: subprocess.Popen[str]) -> str:
        found: list[str] = []
        ready = threading.Event()
        assert proc.stderr is not None
        threading.Thread(target=self._pump, args=(proc.stderr, found, ready), daemon=True).start()
        if not ready.wait(START_TIMEOUT) or not found:
            self.kill()
            raise RuntimeError("tusfast did not start:\n" + "".join(self.log))
        return found[0]

    def _pump(self, stream: IO[str], found: list[str], ready: threading.Event) -> None:
        for line in stream:
            self.log.append(line)
            match = _LISTENING.search(line)
            if match and not ready.is_set():
                found.append(match.group(1))
                ready.set()
        ready.set()

    def upload_url(self, upload_id: str) -> str:
        return self.url + upload_id

    def signal(self, signum: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        assert self._proc is not None
        return self._proc.wait(timeout)

    def kill(self) -> None:
        """kill -9: no chance to flush or clean up."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def stop(self) -> int | None:
        if self._proc is None or self._proc.poll() is not None:
            return self._proc.returncode if self._proc else None
        self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def restart(self) -> "ServerProcess":
        """Start again on the same port, as an operator's restart would."""
        self.kill()
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.start(self.port)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
