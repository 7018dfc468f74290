"""The Python surface: argument checking, the exception hierarchy, buffers, closed objects,
docstrings. A primary here points at a port nobody listens on, so it stays disconnected and
its writes are marked in the dirty map ("degraded")."""

from __future__ import annotations

import array
import inspect
import mmap
import os
import time
from pathlib import Path
from typing import Iterator, Literal

import pytest

import mirror
from conftest import BLOCK, make_volume

SIZE = BLOCK * 64


@pytest.fixture
def primary(tmp_path: Path, dead_peer: str) -> Iterator[mirror.Primary]:
    path = make_volume(tmp_path / "p.img", SIZE)
    with mirror.Primary(path, peer=dead_peer, link_timeout=0.5) as p:
        yield p


def test_exception_hierarchy() -> None:
    assert issubclass(mirror.ConfigError, mirror.MirrorError)
    assert issubclass(mirror.ConfigError, ValueError)
    assert issubclass(mirror.MismatchError, mirror.ConfigError)
    assert issubclass(mirror.LinkError, ConnectionError)
    assert issubclass(mirror.MirrorIOError, OSError)
    for cls in (
        mirror.LinkError,
        mirror.ProtocolError,
        mirror.AuthError,
        mirror.ClosedError,
        mirror.MirrorIOError,
        mirror.RemoteIOError,
    ):
        assert issubclass(cls, mirror.MirrorError)
    # The secondary's disk failing is an I/O error that says it is remote, not a link error.
    assert issubclass(mirror.RemoteIOError, mirror.MirrorIOError)
    assert not issubclass(mirror.RemoteIOError, mirror.LinkError)
    assert mirror.RemoteIOError.remote and not mirror.MirrorIOError.remote


def test_writes_take_any_contiguous_buffer(primary: mirror.Primary) -> None:
    block = os.urandom(BLOCK)
    assert primary.write(0, block) == "degraded"
    assert primary.write(BLOCK, bytearray(block)) == "degraded"
    assert primary.write(2 * BLOCK, memoryview(block)) == "degraded"
    assert primary.write(3 * BLOCK, array.array("I", block)) == "degraded"
    big = bytearray(2 * BLOCK)
    assert primary.write(4 * BLOCK, memoryview(big)[BLOCK:]) == "degraded"
    with mmap.mmap(-1, BLOCK) as m:
        m[:] = block
        assert primary.replicate(5 * BLOCK, m) == "degraded"
    assert primary.write(0, b"") in ("replicated", "degraded")
    with open(primary_path(primary), "rb") as f:
        assert f.read(BLOCK) == block
    st = primary.status()
    assert st.state == "disconnected"
    assert st.degraded
    assert st.dirty_regions >= 1


def test_write_zeroes_and_trim_zero_the_local_range_and_take_the_write_rules(
    primary: mirror.Primary,
) -> None:
    block = os.urandom(BLOCK)
    for i in range(4):
        primary.write(i * BLOCK, block)
    assert primary.write_zeroes(BLOCK, BLOCK) == "degraded"
    assert primary.trim(2 * BLOCK, BLOCK) == "degraded"
    with open(primary_path(primary), "rb") as f:
        data = f.read(4 * BLOCK)
    assert data == block + bytes(2 * BLOCK) + block
    # The whole volume in one call: bounded by the volume, not by a buffer.
    assert primary.trim(0, SIZE) == "degraded"
    for off, length in [(1, BLOCK), (0, BLOCK + 1), (SIZE, BLOCK), (0, SIZE + BLOCK)]:
        with pytest.raises(mirror.ConfigError):
            primary.write_zeroes(off, length)
        with pytest.raises(mirror.ConfigError):
            primary.trim(off, length)
    for bad in (-1, 2**64):
        with pytest.raises((OverflowError, ValueError)):
            primary.trim(bad, BLOCK)
        with pytest.raises((OverflowError, ValueError)):
            primary.write_zeroes(0, bad)


def primary_path(p: mirror.Primary) -> str:
    # The repr names the volume: "<mirror.Primary PATH -> PEER (...)>".
    return repr(p).split(" ")[1]


def test_non_contiguous_and_non_buffer_data_are_refused(primary: mirror.Primary) -> None:
    strided = memoryview(bytearray(2 * BLOCK))[::2]
    with pytest.raises(BufferError):
        primary.write(0, strided)
    for bad in ("text", 12, None, [1, 2, 3]):
        with pytest.raises(TypeError):
            primary.write(0, bad)  # type: ignore[arg-type]


def test_a_bytearray_cannot_be_resized_while_it_is_being_written(primary: mirror.Primary) -> None:
    # The view holds the buffer export only during the call; afterwards resizing works.
    data = bytearray(BLOCK)
    primary.write(0, data)
    data.extend(b"x")
    assert len(data) == BLOCK + 1


@pytest.mark.parametrize(
    "offset, length",
    [
        (SIZE, BLOCK),  # starts at the end
        (SIZE - BLOCK, 2 * BLOCK),  # reaches past the end
        (100, BLOCK),  # unaligned offset
        (0, 100),  # unaligned length not at the end
        (2**63, BLOCK),  # absurd offset
    ],
)
def test_bad_offsets_and_lengths_raise_config_error(
    primary: mirror.Primary, offset: int, length: int
) -> None:
    with pytest.raises(mirror.ConfigError) as e:
        primary.write(offset, bytes(length))
    assert isinstance(e.value, ValueError)
    assert str(e.value).startswith("invalid argument: ")
    with pytest.raises(mirror.ConfigError):
        primary.replicate(offset, bytes(length))


def test_negative_numbers_raise_value_error_and_huge_ones_overflow(primary: mirror.Primary) -> None:
    with pytest.raises(mirror.ConfigError, match="offset must not be negative"):
        primary.write(-BLOCK, bytes(BLOCK))
    with pytest.raises(ValueError, match="length must not be negative"):
        primary.mark_dirty(0, -1)
    with pytest.raises(OverflowError):
        primary.write(2**64, bytes(BLOCK))
    with pytest.raises(mirror.ConfigError):
        primary.mark_dirty(SIZE - 1, 2)
    with pytest.raises(TypeError):
        primary.write("0", bytes(BLOCK))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        primary.write(0.0, bytes(BLOCK))  # type: ignore[arg-type]
    with pytest.raises(mirror.ConfigError):
        primary.scan(first=-1)
    with pytest.raises(mirror.ConfigError):
        primary.scan(first=60, count=5)
    with pytest.raises(mirror.ConfigError):
        primary.scan(algorithm="sha256")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "eventually"}, "unknown replication mode"),
        ({"io": "aio"}, "unknown io backend"),
        ({"algorithm": "sha256"}, "unknown algorithm"),
        ({"compare": "both"}, "unknown compare side"),
        ({"block_size": 1000}, "block size 1000"),
        ({"block_size": -4096}, "block_size must not be negative"),
        ({"region_size": 1000}, "region"),
        ({"interval": 0}, "interval"),
        ({"interval": 1.0, "rate": 0.0}, "rate"),
        ({"rate": 10.0}, "interval"),
        ({"link_timeout": -1.0}, "link_timeout"),
        ({"queue_depth": 0}, "queue depth"),
        ({"peer": ""}, "peer"),
    ],
)
def test_bad_configuration_raises_config_error(
    tmp_path: Path, dead_peer: str, kwargs: dict, match: str
) -> None:
    path = make_volume(tmp_path / "p.img", SIZE)
    args = {"peer": dead_peer, **kwargs}
    with pytest.raises(mirror.ConfigError, match=match):
        mirror.Primary(path, **args)


def test_wrong_types_raise_type_error(tmp_path: Path, dead_peer: str) -> None:
    path = make_volume(tmp_path / "p.img", SIZE)
    with pytest.raises(TypeError):
        mirror.Primary(path, peer=1234)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mirror.Primary(path, peer=dead_peer, block_size="4096")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mirror.Primary(path, dead_peer)  # type: ignore[misc]
    with pytest.raises(TypeError):
        mirror.Primary(12, peer=dead_peer)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mirror.scan(path, algorithm=5)  # type: ignore[arg-type]


def test_missing_files_raise_the_matching_os_error(tmp_path: Path, dead_peer: str) -> None:
    missing = tmp_path / "nope.img"
    with pytest.raises(FileNotFoundError) as e:
        mirror.Primary(missing, peer=dead_peer)
    assert isinstance(e.value, mirror.MirrorIOError)
    assert isinstance(e.value, mirror.MirrorError)
    assert e.value.errno == 2
    assert e.value.filename == str(missing)
    assert str(missing) in str(e.value)
    assert "[Errno" not in str(e.value)  # the engine's message, as the command prints it
    with pytest.raises(FileNotFoundError):
        mirror.scan(missing)
    path = make_volume(tmp_path / "p.img", SIZE)
    with pytest.raises(FileNotFoundError):
        mirror.Primary(path, peer=dead_peer, secret_file=tmp_path / "no-secret")
    with pytest.raises(IsADirectoryError):
        mirror.scan(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_volume_raises_permission_error(tmp_path: Path) -> None:
    path = make_volume(tmp_path / "p.img", SIZE)
    path.chmod(0)
    with pytest.raises(PermissionError) as e:
        mirror.scan(path)
    assert isinstance(e.value, mirror.MirrorIOError)


def test_short_secret_is_refused(tmp_path: Path, dead_peer: str) -> None:
    path = make_volume(tmp_path / "p.img", SIZE)
    secret = tmp_path / "secret"
    secret.write_text("short\n")
    secret.write_text("fifteen bytes!!\n")
    with pytest.raises(mirror.ConfigError, match="at least 16 bytes"):
        mirror.Primary(path, peer=dead_peer, secret_file=secret)
    with pytest.raises(mirror.ConfigError, match="at least 16 bytes"):
        mirror.Secondary(path, secret_file=secret)


def test_non_loopback_addresses_are_refused_without_tls(tmp_path: Path) -> None:
    path = make_volume(tmp_path / "s.img", SIZE)
    with pytest.raises(mirror.ConfigError, match="non-loopback address .* without TLS"):
        mirror.Secondary(path, "0.0.0.0:0")
    with pytest.raises(mirror.ConfigError, match="without TLS"):
        mirror.Primary(path, peer="192.0.2.1:7070")
    with pytest.raises(mirror.ConfigError, match="go together"):
        mirror.Primary(path, peer="127.0.0.1:1", tls_cert=tmp_path / "a.crt")


def test_closed_primary_raises_closed_error(tmp_path: Path, dead_peer: str) -> None:
    path = make_volume(tmp_path / "p.img", SIZE)
    p = mirror.Primary(path, peer=dead_peer, link_timeout=0.5)
    assert not p.closed
    p.close()
    assert p.closed
    p.close()  # twice is fine
    calls = [
        lambda: p.write(0, bytes(BLOCK)),
        lambda: p.replicate(0, bytes(BLOCK)),
        lambda: p.mark_dirty(0, BLOCK),
        lambda: p.flush(),
        lambda: p.scan(),
        lambda: p.resync(),
        lambda: p.verify(),
        lambda: p.wait_connected(0.1),
        lambda: p.status(),
    ]
    for call in calls:
        with pytest.raises(mirror.ClosedError, match="primary is closed"):
            call()
    assert "closed" in repr(p)


def test_closed_secondary_raises_closed_error(tmp_path: Path) -> None:
    path = make_volume(tmp_path / "s.img", SIZE)
    with mirror.Secondary(path) as s:
        host, port = s.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert s.status().connections == 0
    assert s.closed
    with pytest.raises(mirror.ClosedError):
        s.status()
    s.close()


def test_secondary_creates_a_sparse_volume(tmp_path: Path) -> None:
    path = tmp_path / "new.img"
    with mirror.Secondary(path, create=SIZE, io="sync"):
        assert path.stat().st_size == SIZE


def test_primary_properties(primary: mirror.Primary, dead_peer: str) -> None:
    assert primary.peer == dead_peer
    assert primary.algorithm == "sha1"  # the engine's default
    assert primary.mode == "sync"
    assert primary.compare == "primary"
    assert primary.block_size == BLOCK
    assert primary.size == SIZE


def test_wait_connected_to_nobody_raises_link_error(primary: mirror.Primary) -> None:
    with pytest.raises(mirror.LinkError, match="not connected after 0.3s"):
        primary.wait_connected(0.3)
    with pytest.raises(mirror.LinkError):
        primary.resync(timeout=0.3)


def public_members(obj: object) -> Iterator[tuple[str, object]]:
    for name, member in inspect.getmembers(obj):
        if not name.startswith("_"):
            yield name, member


def test_every_public_name_has_a_docstring() -> None:
    assert mirror.__doc__
    for name in mirror.__all__:
        obj = getattr(mirror, name)
        if name == "__version__":
            continue
        assert obj.__doc__, name
        if isinstance(obj, type):
            for mname, member in public_members(obj):
                if isinstance(member, type) and issubclass(obj, BaseException):
                    continue
                if issubclass(obj, BaseException):
                    continue  # inherited from the built-ins
                assert getattr(member, "__doc__", None), f"{name}.{mname}"


def test_ctrl_c_interrupts_waiting_for_the_link(primary: mirror.Primary) -> None:
    import signal
    import threading
    import time

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    try:
        start = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            primary.wait_connected(60)
        elapsed = time.monotonic() - start
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)
    assert elapsed < 5.0
    primary.close()  # the abandoned wait ends with the primary


@pytest.mark.parametrize("compare", ["secondary", "primary"])
def test_a_secondary_that_leads_repairs_itself_on_connection(
    tmp_path: Path, compare: Literal["primary", "secondary"]
) -> None:
    size = 1 << 20
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    data = os.urandom(size)
    a.write_bytes(data)
    b.write_bytes(data[:4096] + bytes(4096) + data[8192:])
    with mirror.Secondary(
        b, scan_on_connect=True, compare=compare, algorithm="crc32", io="sync"
    ) as secondary:
        assert secondary.status().lead_scans == 0
        assert secondary.status().last_report is None
        with mirror.Primary(a, peer=secondary.address, auto_resync=False, io="sync") as primary:
            deadline = time.monotonic() + 30
            while secondary.status().lead_scans == 0:
                assert time.monotonic() < deadline, "no secondary-led scan"
                time.sleep(0.05)
            report = secondary.status().last_report
            assert report is not None
            assert report.mode == "full-scan" and report.compare == compare
            assert report.algorithm == "crc32" and report.mismatched == 1
            deadline = time.monotonic() + 10
            while primary.status().last_secondary_report is None:
                assert time.monotonic() < deadline, "the primary never saw the report"
                time.sleep(0.05)
    assert b.read_bytes() == data


def test_secondary_lead_options_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "v.img"
    with pytest.raises(mirror.ConfigError):
        mirror.Secondary(path, create=1 << 20, compare="sideways")  # type: ignore[arg-type]
    with pytest.raises(mirror.ConfigError):
        mirror.Secondary(path, create=1 << 20, rate=10)
    with pytest.raises(mirror.ConfigError):
        mirror.Secondary(path, create=1 << 20, interval=0)
def test_flush_with_no_secondary_raises_link_error(primary: mirror.Primary) -> None:
    # A flush nobody performed is not a success.
    with pytest.raises(mirror.LinkError):
        primary.flush()


def test_on_disconnect_fail_and_suspend_refuse_writes_without_a_replica(
    tmp_path: Path, dead_peer: str
) -> None:
    path = make_volume(tmp_path / "p.img", SIZE)
    with mirror.Primary(path, peer=dead_peer, on_disconnect="fail") as p:
        with pytest.raises(mirror.LinkError):
            p.write(0, b"\x01" * BLOCK)
        # Refused, and tracked all the same.
        assert p.status().dirty_regions == 1
    with mirror.Primary(
        path, peer=dead_peer, on_disconnect="suspend", suspend_timeout=0.3, durability="written"
    ) as p:
        with pytest.raises(mirror.LinkError, match="suspend"):
            p.write(0, b"\x02" * BLOCK)
    for bad in ({"durability": "fsync"}, {"on_disconnect": "block"}, {"suspend_timeout": 0.0}):
        with pytest.raises(mirror.ConfigError):
            mirror.Primary(path, peer=dead_peer, **bad)  # type: ignore[arg-type]
