"""A real `t2i serve` process on a free local port, for the server's and the web page's tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.url}/sdapi/v1"

    def rss_mb(self) -> float:
        """The server process's resident memory."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(workdir: Path, *args: str, auth: tuple[str, str] | None = None) -> Server:
    """Start `t2i serve ARGS` and return once its API answers."""
    port = free_port()
    log = workdir / f"server-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("T2I_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-m", "t2i", "serve", "--port", str(port), *map(str, args)],
                               stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=workdir, env=env)
    server = Server(process, port, log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"t2i serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{server.api}/progress", auth=auth, timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    server.stop()
    raise AssertionError(f"t2i serve did not answer in {READY_TIMEOUT_S} s:\n{log.read_text()}")
