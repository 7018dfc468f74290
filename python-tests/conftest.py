"""Fixtures of the Python integration tests: volume files, a secondary run as another
process (``mirror serve``), and a TCP proxy the test controls to cut and restore the link."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Literal, Optional, Set

import pytest

REPO = Path(__file__).resolve().parent.parent
BLOCK = 4096

Algorithm = Literal["crc32", "md5", "sha1"]
Compare = Literal["primary", "secondary"]
Io = Literal["uring", "sync"]


def find_mirror_bin() -> Optional[str]:
    """The ``mirror`` binary: $MIRROR_BIN, else target/{release,debug}/mirror under the
    repository (or $CARGO_TARGET_DIR). MIRROR_SECONDARY=python runs the secondary as a
    Python ``mirror.Secondary`` in a subprocess instead."""
    if os.environ.get("MIRROR_SECONDARY") == "python":
        return None
    env = os.environ.get("MIRROR_BIN")
    if env:
        return env
    roots = [REPO / "target"]
    if os.environ.get("CARGO_TARGET_DIR"):
        roots.insert(0, Path(os.environ["CARGO_TARGET_DIR"]))
    for root in roots:
        for profile in ("release", "debug"):
            cand = root / profile / "mirror"
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    return None


MIRROR_BIN = find_mirror_bin()

# Stand-in for `mirror serve` when the binary is not built (run.sh always builds it and sets
# MIRROR_REQUIRE_BIN, so CI never uses this).
_FALLBACK_SERVE = r"""
import signal, sys, threading, mirror
path, size, bs, secret = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] or None
stop = threading.Event()
signal.signal(signal.SIGINT, lambda *_: stop.set())
signal.signal(signal.SIGTERM, lambda *_: stop.set())
with mirror.Secondary(path, "127.0.0.1:0", create=size, block_size=bs, secret_file=secret) as s:
    print("listening on " + s.address, flush=True)
    while not stop.wait(0.1):
        pass
"""


def pytest_report_header(config: pytest.Config) -> str:
    import mirror

    serve = f"{MIRROR_BIN} serve" if MIRROR_BIN else "python mirror.Secondary (no mirror binary)"
    return f"mirror {mirror.__version__} from {mirror.__file__}; secondary: {serve}"


class SecondaryProcess:
    """A secondary in another process, listening on a free loopback port."""

    def __init__(
        self,
        volume: Path,
        size: int,
        log: Path,
        *,
        block_size: int = BLOCK,
        secret_file: Optional[Path] = None,
    ) -> None:
        self.volume = volume
        if MIRROR_BIN:
            cmd = [
                MIRROR_BIN,
                "serve",
                "--volume",
                str(volume),
                "--listen",
                "127.0.0.1:0",
                "--create",
                str(size),
                "--block-size",
                str(block_size),
            ]
            if secret_file is not None:
                cmd += ["--secret-file", str(secret_file)]
        elif os.environ.get("MIRROR_REQUIRE_BIN"):
            raise RuntimeError("the mirror binary is required (MIRROR_REQUIRE_BIN) but not built")
        else:
            cmd = [
                sys.executable,
                "-c",
                _FALLBACK_SERVE,
                str(volume),
                str(size),
                str(block_size),
                str(secret_file or ""),
            ]
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        m = re.match(r"listening on (\S+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"secondary did not start: {line!r}; log: {log.read_text()}")
        self.address = m.group(1)

    def stop(self) -> int:
        """Stops it with SIGINT, as an operator would; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


class Proxy:
    """A TCP proxy on a free loopback port, forwarding to ``upstream``. ``cut()`` drops every
    connection and refuses new ones; ``restore()`` lets them through again."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.connections = 0
        self._lock = threading.Lock()
        self._socks: Set[socket.socket] = set()
        self._threads: List[threading.Thread] = []
        self._up = True
        self._stopped = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="proxy-accept")
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                up = self._up and not self._stopped
            if not up:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._socks.update((client, server))
                self.connections += 1
                for src, dst in ((client, server), (server, client)):
                    t = threading.Thread(target=self._pump, args=(src, dst), name="proxy-pump")
                    self._threads.append(t)
                    t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                for s in (src, dst):
                    self._socks.discard(s)
            src.close()

    def cut(self) -> None:
        """Drops every connection; new ones are closed as soon as accepted."""
        with self._lock:
            self._up = False
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        """Lets connections through again."""
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._stopped = True
        self.cut()
        self._acceptor.join()
        self.listener.close()
        for t in self._threads:
            t.join(timeout=10)


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Polls ``cond`` until it holds, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def make_volume(path: Path, size: int, data: Optional[bytes] = None) -> Path:
    """A volume file of ``size`` bytes: ``data`` or zeros (sparse)."""
    with open(path, "wb") as f:
        if data is not None:
            assert len(data) == size
            f.write(data)
        else:
            f.truncate(size)
    return path


def read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def start_secondary(tmp_path: Path) -> Iterator[Callable[..., SecondaryProcess]]:
    """Starts secondaries (``mirror serve``) over files in the test's directory; stops them
    at the end of the test."""
    started: List[SecondaryProcess] = []

    def start(
        size: int,
        name: str = "secondary.img",
        *,
        block_size: int = BLOCK,
        secret_file: Optional[Path] = None,
    ) -> SecondaryProcess:
        s = SecondaryProcess(
            tmp_path / name,
            size,
            tmp_path / (name + ".log"),
            block_size=block_size,
            secret_file=secret_file,
        )
        started.append(s)
        return s

    yield start
    codes = [s.stop() for s in started]
    # `mirror serve` exits cleanly on SIGINT.
    assert codes == [0] * len(codes), f"secondary exit statuses {codes}"


@pytest.fixture
def proxy_to() -> Iterator[Callable[[str], Proxy]]:
    """Starts proxies to given addresses; closes them at the end of the test."""
    proxies: List[Proxy] = []

    def start(upstream: str) -> Proxy:
        p = Proxy(upstream)
        proxies.append(p)
        return p

    yield start
    for p in proxies:
        p.close()


@pytest.fixture
def dead_peer() -> str:
    """A loopback address nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]
