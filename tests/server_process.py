"""The installed `localllm serve` in a subprocess on 127.0.0.1, as a user starts it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from conftest import LOCALLLM

READY = re.compile(r"serving on (http://\S+) ")


def isolated_env(root: Path, **extra: str) -> dict[str, str]:
    """localllm's and the Hub's state under `root`, offline, as conftest's isolated_home sets it."""
    env = {**os.environ, "HOME": str(root / "user"), "LOCALLLM_HOME": str(root / "localllm"),
           "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1", **extra}
    for name in ("LLAMA_CACHE", "XDG_CACHE_HOME", "LOCALLLM_API_KEY", "LOCALLLM_DEBUG"):
        env.pop(name, None)
    env.update(extra)
    return env


class ServerProcess:
    def __init__(self, *args: str, env: dict[str, str], ready_within: float = 60):
        self.proc = subprocess.Popen([*LOCALLLM, "serve", "--port", "0", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(ready_within):
            self.stop()
            raise RuntimeError(f"the server did not start: {self.lines}")

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if not self._ready.is_set() and (found := READY.search(line)):
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()

    def log_lines_for(self, path: str) -> list[str]:
        return [line for line in self.lines if f" {path} " in line]

    def wait_for_log(self, fragment: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if fragment in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"{fragment!r} not logged: {self.lines[-10:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        return code
