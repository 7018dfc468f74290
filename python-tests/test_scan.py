"""mirror.scan: per-block digests equal to hashlib/zlib, one buffer of digests, the GIL
released while it runs, and Ctrl-C stopping it."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
import zlib
from pathlib import Path

import pytest

import mirror
from conftest import BLOCK, Algorithm, Io, make_volume


def reference_digest(algorithm: str, block: bytes) -> bytes:
    if algorithm == "crc32":
        return zlib.crc32(block).to_bytes(4, "big")
    return hashlib.new(algorithm, block).digest()


@pytest.mark.parametrize("algorithm", ["crc32", "md5", "sha1"])
def test_scan_digests_equal_hashlib_and_zlib_including_a_partial_last_block(
    tmp_path: Path, algorithm: Algorithm
) -> None:
    data = os.urandom(BLOCK * 37 + 1000)
    path = make_volume(tmp_path / "v.img", len(data), data)
    m = mirror.scan(path, algorithm=algorithm)
    assert len(m) == 38
    assert m.algorithm == algorithm
    assert m.first == 0
    assert m.block_size == BLOCK
    blocks = [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]
    want = [reference_digest(algorithm, b) for b in blocks]
    assert m.digest_size == len(want[0])
    assert [m[i] for i in range(len(m))] == want
    assert list(m) == want
    assert m[-1] == want[-1]
    assert m.digests == b"".join(want)
    assert bytes(m) == m.digests
    assert m.hex(3) == want[3].hex()
    if algorithm == "crc32":
        assert int(m.hex(0), 16) == zlib.crc32(blocks[0])


def test_scan_of_a_subrange_and_a_larger_block_size(tmp_path: Path) -> None:
    data = os.urandom(65536 * 8)
    path = make_volume(tmp_path / "v.img", len(data), data)
    m = mirror.scan(path, algorithm="sha1", block_size=65536, first=2, count=3)
    assert (m.first, len(m), m.block_size) == (2, 3, 65536)
    assert m[0] == hashlib.sha1(data[2 * 65536 : 3 * 65536]).digest()


def test_scan_result_is_one_buffer_not_an_object_per_block(tmp_path: Path) -> None:
    path = make_volume(tmp_path / "v.img", 64 << 20)
    m = mirror.scan(path, algorithm="crc32")
    assert len(m) == 16384
    view = memoryview(m.digests)
    assert view.nbytes == 16384 * 4
    assert m.digests is m.digests  # the same object every time: no copy per access
    zero = zlib.crc32(bytes(BLOCK)).to_bytes(4, "big")
    assert view[4:8].tobytes() == zero


def test_scan_maps_compare_by_digest(tmp_path: Path) -> None:
    a = os.urandom(BLOCK * 10)
    b = bytearray(a)
    b[BLOCK * 3] ^= 1
    b[BLOCK * 4 + 7] ^= 1
    b[BLOCK * 9] ^= 1
    pa = make_volume(tmp_path / "a.img", len(a), a)
    pb = make_volume(tmp_path / "b.img", len(b), bytes(b))
    ma, mb = mirror.scan(pa), mirror.scan(pb)
    assert ma.mismatches(mb) == [(3, 2), (9, 1)]
    assert ma != mb
    assert ma == mirror.scan(pa)
    with pytest.raises(mirror.ConfigError):
        ma.mismatches(mirror.scan(pa, algorithm="crc32"))


def test_scan_index_errors(tmp_path: Path) -> None:
    m = mirror.scan(make_volume(tmp_path / "v.img", BLOCK * 2))
    with pytest.raises(IndexError):
        m[2]
    with pytest.raises(IndexError):
        m[-3]
    with pytest.raises(IndexError):
        m.hex(5)
    with pytest.raises(TypeError):
        m["0"]  # type: ignore[index]


def test_another_python_thread_runs_during_a_long_scan(tmp_path: Path) -> None:
    path = make_volume(tmp_path / "big.img", 1 << 30)  # sparse
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    try:
        start = time.monotonic()
        ticks_at_start = ticks
        m = mirror.scan(path, algorithm="sha1")
        elapsed = time.monotonic() - start
        ticks_during = ticks - ticks_at_start
    finally:
        done.set()
        t.join()
    assert len(m) == (1 << 30) // BLOCK
    # With the GIL held for the whole scan the counter would not move at all; released, it
    # ticks about once a millisecond.
    assert ticks_during >= max(5, int(elapsed * 50)), (ticks_during, elapsed)


def test_ctrl_c_interrupts_a_long_scan_with_keyboard_interrupt(tmp_path: Path) -> None:
    path = make_volume(tmp_path / "huge.img", 64 << 30)  # sparse; minutes to hash whole
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    try:
        start = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            mirror.scan(path, algorithm="sha1")
        elapsed = time.monotonic() - start
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)
    assert elapsed < 5.0, f"took {elapsed:.1f}s to stop"
    # The module still works afterwards.
    assert len(mirror.scan(path, algorithm="crc32", count=4)) == 4


def test_scan_reports_progress_and_a_raising_callback_stops_it(tmp_path: Path) -> None:
    path = make_volume(tmp_path / "v.img", 64 << 20)
    seen: list[tuple[int, int]] = []
    threads: set[int] = set()

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        threads.add(threading.get_ident())

    m = mirror.scan(path, algorithm="crc32", progress=progress)
    assert seen and seen[-1] == (len(m), len(m))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    class Stop(Exception):
        pass

    calls = 0

    def stop(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        raise Stop(f"stop at {done}/{total}")

    with pytest.raises(Stop, match="stop at"):
        mirror.scan(path, algorithm="crc32", progress=stop)
    assert calls == 1
    with pytest.raises(TypeError):
        mirror.scan(path, progress=lambda: None)  # type: ignore[arg-type,misc]


@pytest.mark.parametrize("io", ["uring", "sync"])
def test_both_io_backends_scan_the_same(tmp_path: Path, io: Io) -> None:
    data = os.urandom(BLOCK * 50)
    path = make_volume(tmp_path / "v.img", len(data), data)
    m = mirror.scan(path, algorithm="md5", io=io)
    assert m.digests == b"".join(
        hashlib.md5(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK)
    )
