"""The nbdkit plugin (nbdkit-plugin/mirror.c) as software that links nothing sees it: an NBD
export on a Unix socket whose writes reach a `mirror serve` secondary. Clients are qemu-io,
qemu-img, nbdcopy; the secondary's file is checked byte for byte and by e2fsck.

The plugin is $NBDKIT_PLUGIN (`make test` builds it with `make nbdkit-plugin`), else
target/nbdkit/nbdkit-mirror-plugin.so. Missing tools skip these tests, with the reason, except
when $CI is set: then they fail."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

from conftest import REPO, Proxy, SecondaryProcess, make_volume, read, wait_until

SIZE = 32 << 20
BLOCK = 4096


def plugin_path() -> Path:
    env = os.environ.get("NBDKIT_PLUGIN")
    return Path(env) if env else REPO / "target" / "nbdkit" / "nbdkit-mirror-plugin.so"


def unavailable(reason: str) -> None:
    """Skips the test, or fails it in CI, where every tool is installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


def require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (Debian: nbdkit libnbd-bin qemu-utils e2fsprogs)")
    if not plugin_path().is_file():
        unavailable(f"the nbdkit plugin is not built at {plugin_path()} (make nbdkit-plugin)")


class Nbdkit:
    """nbdkit serving the mirror plugin on a Unix socket, in the foreground, verbose (the
    plugin's status lines are its debug output)."""

    def __init__(
        self,
        tmp: Path,
        volume: Path,
        peer: str,
        *options: str,
        wrapper: Optional[List[str]] = None,
        env: Optional[dict[str, str]] = None,
        ready_timeout: float = 30,
    ) -> None:
        self.socket = tmp / "nbd.sock"
        self.log = tmp / "nbdkit.log"
        cmd = list(wrapper or []) + [
            "nbdkit",
            "-f",
            "-v",
            "--exit-with-parent",
            "-U",
            str(self.socket),
            str(plugin_path()),
            f"volume={volume}",
            f"peer={peer}",
            "connect-timeout=20s",
            *options,
        ]
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=self._logf,
            env={**os.environ, **(env or {})},
        )
        wait_until(
            lambda: self.proc.poll() is not None or "mirror ready:" in self.text(),
            timeout=ready_timeout,
            what="nbdkit to open the primary",
        )
        assert self.proc.poll() is None, f"nbdkit exited: {self.text()}"
        # Up: connected, or already resyncing (a new pair starts with a full scan).
        assert re.search(r"mirror ready: link (connected|resyncing)", self.text()), self.text()
        self.uri = f"nbd+unix:///?socket={self.socket}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def status_lines(self) -> List[str]:
        return re.findall(r"mirror [^\n]*: link [^\n]*", self.text())

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a service manager would: the plugin closes its primary, which waits for
        queued writes."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode


@pytest.fixture
def start_nbdkit(tmp_path: Path) -> Iterator[Callable[..., Nbdkit]]:
    started: List[Nbdkit] = []

    def start(volume: Path, peer: str, *options: str, **kwargs: object) -> Nbdkit:
        n = Nbdkit(tmp_path, volume, peer, *options, **kwargs)  # type: ignore[arg-type]
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


def qemu_io(uri: str, commands: List[str], timeout: float = 60) -> str:
    """Runs qemu-io commands on the export; fails the test on any error."""
    args = ["qemu-io", "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    r = subprocess.run(args + [uri], capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "error" not in out.lower() and "fail" not in out.lower(), out
    return out


def assert_equal(a: Path, b: Path) -> None:
    da, db = read(a), read(b)
    if da != db:
        bad = [i for i in range(0, len(da), BLOCK) if da[i : i + BLOCK] != db[i : i + BLOCK]]
        pytest.fail(f"volumes differ in {len(bad)} blocks, first {[i // BLOCK for i in bad[:10]]}")


def scattered_writes(rng: random.Random, n: int) -> List[str]:
    """qemu-io writes of patterns at scattered offsets, some not block-aligned (qemu aligns
    them to the plugin's minimum block size), with a flush every few writes and FUA on some."""
    cmds: List[str] = []
    for i in range(n):
        length = rng.choice([512, 4096, 12288, 65536, 1 << 20, 3000])
        offset = rng.randrange(0, SIZE - length)
        if length % 512 == 0 and rng.random() < 0.7:
            offset -= offset % 4096
        fua = " -f" if i % 7 == 3 else ""
        cmds.append(f"write{fua} -P {rng.randrange(1, 256)} {offset} {length}")
        if i % 5 == 4:
            cmds.append("flush")
    return cmds + ["flush"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_qemu_io_scattered_writes_reach_the_secondary_byte_for_byte(
    tmp_path: Path,
    start_secondary: Callable[..., SecondaryProcess],
    start_nbdkit: Callable[..., Nbdkit],
    mode: str,
) -> None:
    require("nbdkit", "qemu-io")
    primary = make_volume(tmp_path / "primary.img", SIZE)
    secondary = start_secondary(SIZE)
    nbd = start_nbdkit(primary, secondary.address, f"mode={mode}")
    rng = random.Random(mode)
    qemu_io(nbd.uri, scattered_writes(rng, 120))
    # What the client reads back is what it wrote (reads are the local volume's).
    qemu_io(nbd.uri, ["write -P 0x5a 1048576 65536", "read -P 0x5a 1048576 65536"])
    assert nbd.stop() == 0, nbd.text()
    assert_equal(primary, secondary.volume)
    assert any("connection 1 opened" in s for s in nbd.status_lines()), nbd.text()


@pytest.mark.parametrize("copier", ["nbdcopy", "qemu-img"])
def test_ext4_image_copied_into_the_export_is_clean_on_the_secondary(
    tmp_path: Path,
    start_secondary: Callable[..., SecondaryProcess],
    start_nbdkit: Callable[..., Nbdkit],
    copier: str,
) -> None:
    require("nbdkit", "mke2fs", "e2fsck", copier)
    rng = random.Random(copier)
    tree = tmp_path / "tree"
    for d in range(6):
        sub = tree / f"dir{d}" / "nested"
        sub.mkdir(parents=True)
        for f in range(8):
            (sub / f"file{f}.bin").write_bytes(rng.randbytes(rng.randrange(1, 200_000)))
    (tree / "README").write_text("a mirrored ext4 image\n")
    image = tmp_path / "fs.img"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(tree), str(image), "32M"],
        check=True,
        capture_output=True,
    )
    assert image.stat().st_size == SIZE

    primary = make_volume(tmp_path / "primary.img", SIZE)
    secondary = start_secondary(SIZE)
    nbd = start_nbdkit(primary, secondary.address, "mode=async")
    if copier == "nbdcopy":
        # nbdcopy opens several connections when the export offers multi-conn.
        cmd = ["nbdcopy", "--flush", str(image), nbd.uri]
    else:
        cmd = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image), nbd.uri]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert nbd.stop() == 0, nbd.text()

    assert_equal(primary, secondary.volume)
    assert read(secondary.volume) == read(image)
    fsck = subprocess.run(
        ["e2fsck", "-fn", str(secondary.volume)], capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_link_cut_while_qemu_io_writes_degrades_then_resyncs_and_the_client_sees_no_error(
    tmp_path: Path,
    start_secondary: Callable[..., SecondaryProcess],
    proxy_to: Callable[[str], Proxy],
    start_nbdkit: Callable[..., Nbdkit],
) -> None:
    require("nbdkit", "qemu-io")
    primary = make_volume(tmp_path / "primary.img", SIZE)
    secondary = start_secondary(SIZE)
    proxy = proxy_to(secondary.address)
    nbd = start_nbdkit(primary, proxy.address, "mode=sync", "link-timeout=1s")

    # The writer: one qemu-io session after another (each one a connection, so each one
    # logs the primary's status), every one of which must succeed.
    stop = threading.Event()
    batches: List[int] = []
    failures: List[str] = []

    def writer() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            try:
                qemu_io(nbd.uri, scattered_writes(rng, 20))
                batches.append(1)
            except BaseException as e:  # noqa: BLE001 - reported to the test thread
                failures.append(repr(e))
                return

    t = threading.Thread(target=writer, name="qemu-io-writer")
    t.start()
    try:
        wait_until(lambda: len(batches) >= 3 or bool(failures), what="writes before the cut")
        proxy.cut()
        wait_until(
            lambda: any("link disconnected" in s and " 0 dirty regions" not in s
                        for s in nbd.status_lines()) or bool(failures),
            what="the primary to degrade and mark its dirty map",
        )
        cut_at = len(batches)
        wait_until(lambda: len(batches) >= cut_at + 3 or bool(failures),
                   what="writes while the link is down")
        proxy.restore()
        restored_lines = len(nbd.status_lines())
        wait_until(
            lambda: any("link connected" in s for s in nbd.status_lines()[restored_lines:])
            or bool(failures),
            timeout=30,
            what="the primary to reconnect",
        )
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(timeout=60)
    assert not failures, failures

    # Once idle and reconnected, nothing is owed; one more session logs it.
    def settled() -> bool:
        qemu_io(nbd.uri, ["read 0 4096"])
        last = nbd.status_lines()[-1]
        return "link connected" in last and " 0 dirty regions" in last

    wait_until(settled, timeout=30, what="the resync to clear the dirty map")
    # The map stayed valid across the cut, so what the secondary lacked was shipped from it
    # (by the reconnection resync, or by a flush that resyncs what is dirty first), never by
    # a full scan.
    lines = nbd.status_lines()
    assert all("map valid" in s for s in lines[restored_lines:]), nbd.text()
    assert not any("last report full-scan" in s for s in lines), nbd.text()
    assert proxy.connections >= 2
    assert nbd.stop() == 0, nbd.text()
    assert_equal(primary, secondary.volume)


def test_plugin_under_valgrind_has_no_error_and_no_definite_leak(
    tmp_path: Path,
    start_secondary: Callable[..., SecondaryProcess],
    start_nbdkit: Callable[..., Nbdkit],
) -> None:
    require("nbdkit", "qemu-io")
    if shutil.which("valgrind") is None:
        if os.environ.get("MIRROR_REQUIRE_VALGRIND") == "1":
            pytest.fail("valgrind is not installed and MIRROR_REQUIRE_VALGRIND=1")
        pytest.skip("valgrind is not installed (apt-get install -y valgrind)")
    primary = make_volume(tmp_path / "primary.img", SIZE)
    secondary = start_secondary(SIZE)
    # libmirror's suppressions (threads alive at exit), and nbdkit's own leak.
    supps = [
        REPO / "mirror-ffi" / "tests" / "c" / "valgrind.supp",
        Path(__file__).resolve().parent / "nbdkit-valgrind.supp",
    ]
    wrapper = [
        "valgrind",
        "--quiet",
        "--error-exitcode=99",
        "--leak-check=full",
        "--show-leak-kinds=definite",
        "--errors-for-leak-kinds=definite",
    ] + [f"--suppressions={s}" for s in supps]
    # NBDKIT_VALGRIND keeps the plugin loaded at exit, so leaks are attributed to it.
    nbd = start_nbdkit(
        primary,
        secondary.address,
        "io=sync",
        wrapper=wrapper,
        env={"NBDKIT_VALGRIND": "1"},
        ready_timeout=90,
    )
    qemu_io(nbd.uri, scattered_writes(random.Random(3), 10) + ["read 0 65536"], timeout=120)
    status = nbd.stop(timeout=120)
    assert status == 0, nbd.text()
    assert "definitely lost" not in nbd.text(), nbd.text()
    assert_equal(primary, secondary.volume)


def test_plugin_needs_the_soname_loads_and_lists_its_options() -> None:
    require("nbdkit")
    plugin = plugin_path()
    if shutil.which("readelf"):
        dyn = subprocess.run(["readelf", "-d", str(plugin)], capture_output=True, text=True)
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(libmirror[^\]]*)\]", dyn.stdout)
        assert needed == ["libmirror.so.0"], dyn.stdout
    dump = subprocess.run(
        ["nbdkit", "--dump-plugin", str(plugin)], capture_output=True, text=True, timeout=30
    )
    assert dump.returncode == 0, dump.stderr
    assert "name=mirror" in dump.stdout and "thread_model=parallel" in dump.stdout, dump.stdout
    helptext = subprocess.run(
        ["nbdkit", str(plugin), "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    for option in [
        "volume=", "peer=", "mode=", "algorithm=", "compare=", "block-size=", "region-size=",
        "interval=", "rate=", "secret-file=", "io=", "direct-io=", "queue-depth=",
        "link-timeout=", "connect-timeout=", "auto-resync=", "tls-cert=", "tls-key=",
        "tls-trust=", "allow-insecure=",
    ]:
        assert option in helptext, f"{option} missing from --help:\n{helptext}"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_qemu_io_trim_and_write_zeroes_reach_the_secondary_as_zeros(
    tmp_path: Path,
    start_secondary: Callable[..., SecondaryProcess],
    start_nbdkit: Callable[..., Nbdkit],
    mode: str,
) -> None:
    require("nbdkit", "qemu-io")
    primary = make_volume(tmp_path / "primary.img", SIZE)
    secondary = start_secondary(SIZE)
    nbd = start_nbdkit(primary, secondary.address, f"mode={mode}")
    mib = 1 << 20
    # Data everywhere first, so every zeroed range is a change the secondary must see.
    # The flush returns once both sides have it (in async mode too: it follows the writes).
    qemu_io(nbd.uri, ["write -P 0xa5 0 8M", "flush"])
    blocks_before = (primary.stat().st_blocks, secondary.volume.stat().st_blocks)
    zeroed = [
        (1 * mib, mib),  # discard (NBD trim)
        (2 * mib, 512 << 10),  # write -z: write-zeroes, storage kept
        (3 * mib, 256 << 10),  # write -z -u: write-zeroes that may punch a hole
        (4 * mib, 64 << 10),  # write -z -f: write-zeroes with FUA
        (5 * mib + BLOCK, 2 * BLOCK),  # the inner blocks of an unaligned discard
    ]
    out = qemu_io(
        nbd.uri,
        [
            f"discard {1 * mib} {mib}",
            f"write -z {2 * mib} {512 << 10}",
            f"write -z -u {3 * mib} {256 << 10}",
            f"write -z -f {4 * mib} {64 << 10}",
            f"discard {5 * mib + 100} {2 * BLOCK + 3996}",
            f"read -P 0 {2 * mib} {512 << 10}",
            f"read -P 0xa5 {6 * mib} 4096",
            "flush",
        ],
    )
    assert "discard " in out and "wrote " in out, out
    assert nbd.stop() == 0, nbd.text()
    assert "Operation not supported" not in nbd.text()

    data = read(secondary.volume)
    for off, length in zeroed:
        assert data[off : off + length] == bytes(length), f"{off}+{length} not zero"
    # Outside the ranges the data stays, the unaligned discard's partial blocks included.
    assert data[5 * mib : 5 * mib + BLOCK] == b"\xa5" * BLOCK
    assert data[5 * mib + 3 * BLOCK : 5 * mib + 4 * BLOCK] == b"\xa5" * BLOCK
    assert data[6 * mib : 8 * mib] == b"\xa5" * (2 * mib)
    assert_equal(primary, secondary.volume)
    # Where the file system punches holes (the primary's shrank), the trim released the
    # secondary's storage too: it travelled as a trim, not as written zeros.
    if primary.stat().st_blocks < blocks_before[0]:
        assert secondary.volume.stat().st_blocks < blocks_before[1]
