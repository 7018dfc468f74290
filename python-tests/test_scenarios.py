"""The engine's scenarios, driven from Python: the secondary runs in another process
(``mirror serve``), the primary in the test, through a proxy the test cuts and restores."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Tuple

import pytest

import mirror
from conftest import (
    BLOCK,
    Algorithm,
    Compare,
    Proxy,
    SecondaryProcess,
    make_volume,
    read,
    wait_until,
)

SIZE = 8 << 20  # 2048 blocks of 4 KiB
BLOCKS = SIZE // BLOCK

Pair = Tuple[Path, SecondaryProcess, Proxy]


@pytest.fixture
def pair(
    tmp_path: Path,
    start_secondary: Callable[..., SecondaryProcess],
    proxy_to: Callable[[str], Proxy],
) -> Pair:
    """A zeroed primary volume, a secondary process over a zeroed volume of the same size,
    and a proxy between them."""
    primary = make_volume(tmp_path / "primary.img", SIZE)
    secondary = start_secondary(SIZE)
    return primary, secondary, proxy_to(secondary.address)


def random_writes(p: mirror.Primary, path: Path, rng: random.Random, n: int) -> list[str]:
    outcomes: list[str] = []
    for _ in range(n):
        block = rng.randrange(BLOCKS)
        count = rng.randint(1, 4)
        count = min(count, BLOCKS - block)
        outcomes.append(p.write(block * BLOCK, rng.randbytes(count * BLOCK)))
    return outcomes


def corrupt(path: Path, blocks: list[int], rng: random.Random) -> None:
    """Changes blocks of a volume file behind mirror's back."""
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(rng.randbytes(BLOCK))
        f.flush()
        os.fsync(f.fileno())


def assert_equal(a: Path, b: Path) -> None:
    da, db = read(a), read(b)
    if da != db:
        bad = [i for i in range(0, len(da), BLOCK) if da[i : i + BLOCK] != db[i : i + BLOCK]]
        pytest.fail(f"volumes differ in {len(bad)} blocks, first {[i // BLOCK for i in bad[:10]]}")


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    return random.Random(request.node.name)


def open_primary(path: Path, proxy: Proxy, **kwargs: object) -> mirror.Primary:
    kwargs.setdefault("link_timeout", 2.0)
    kwargs.setdefault("auto_resync", False)
    p = mirror.Primary(path, peer=proxy.address, **kwargs)  # type: ignore[arg-type]
    p.wait_connected(20)
    return p


def test_sync_mode_replicates_every_write_before_returning(pair: Pair, rng: random.Random) -> None:
    path, secondary, proxy = pair
    with open_primary(path, proxy, mode="sync") as p:
        first = p.resync()
        assert first.mode == "full-scan"
        assert first.mismatched == 0
        outcomes = random_writes(p, path, rng, 200)
        assert set(outcomes) == {"replicated"}
        # Acknowledged means the secondary has it: no flush, no wait.
        assert_equal(path, secondary.volume)
        st = p.status()
        assert st.state == "connected" and not st.degraded
        assert st.pending_writes == 0
        assert st.bytes_sent > 200 * BLOCK


def test_async_mode_queues_writes_and_catches_up(pair: Pair, rng: random.Random) -> None:
    path, secondary, proxy = pair
    with open_primary(path, proxy, mode="async") as p:
        p.resync()
        outcomes = random_writes(p, path, rng, 300)
        assert set(outcomes) <= {"queued", "degraded"}
        assert "queued" in outcomes
        p.flush()
        wait_until(lambda: p.status().pending_writes == 0, what="queue drained")
        if "degraded" in outcomes:  # queue overflowed: the dirty map has the rest
            p.resync()
        assert_equal(path, secondary.volume)


def test_link_cut_marks_the_dirty_map_and_resync_ships_only_dirty_regions(
    pair: Pair, rng: random.Random
) -> None:
    path, secondary, proxy = pair
    with open_primary(path, proxy) as p:
        assert p.resync().mode == "full-scan"
        random_writes(p, path, rng, 20)
        proxy.cut()
        wait_until(lambda: p.status().state == "disconnected", what="link down")
        outcomes = random_writes(p, path, rng, 30)
        assert set(outcomes) == {"degraded"}
        st = p.status()
        assert st.degraded and st.map_valid
        assert st.dirty_regions > 0 and st.dirty_bytes >= st.dirty_regions * BLOCK
        assert read(path) != read(secondary.volume)
        proxy.restore()
        report = p.resync(timeout=30)
        assert report.mode == "dirty-map"
        assert report.mismatched > 0
        assert report.blocks < BLOCKS  # only the dirty regions were compared
        assert report.blocks_sent >= report.mismatched
        assert report.bytes_sent >= report.blocks_sent * BLOCK
        assert report.bytes_sent < SIZE // 2
        assert p.status().dirty_regions == 0
        assert_equal(path, secondary.volume)
        assert proxy.connections >= 2


def test_reconnection_resyncs_by_itself_from_the_dirty_map(pair: Pair, rng: random.Random) -> None:
    path, secondary, proxy = pair
    with open_primary(path, proxy, auto_resync=True) as p:
        wait_until(lambda: p.status().last_report is not None, what="first resync")
        proxy.cut()
        wait_until(lambda: p.status().state == "disconnected", what="link down")
        random_writes(p, path, rng, 25)
        proxy.restore()

        def resynced() -> bool:
            st = p.status()
            r = st.last_report
            return st.state == "connected" and st.dirty_regions == 0 and r is not None and r.mode == "dirty-map"

        wait_until(resynced, timeout=30, what="dirty-map resync")
        assert_equal(path, secondary.volume)


def test_primary_restart_loses_the_map_and_resyncs_by_full_scan(
    pair: Pair, rng: random.Random
) -> None:
    path, secondary, proxy = pair
    with open_primary(path, proxy) as p:
        p.resync()
        random_writes(p, path, rng, 20)
    assert_equal(path, secondary.volume)
    # Writes land while no primary runs: nothing tracks them.
    changed = sorted(rng.sample(range(BLOCKS), 17))
    corrupt(path, changed, rng)
    with open_primary(path, proxy) as p:
        assert not p.status().map_valid
        report = p.resync()
        assert report.mode == "full-scan"
        assert report.blocks == BLOCKS
        assert report.mismatched == len(changed)
        assert report.blocks_sent == len(changed)
    assert_equal(path, secondary.volume)


@pytest.mark.parametrize("compare", ["primary", "secondary"])
@pytest.mark.parametrize("algorithm", ["crc32", "md5", "sha1"])
def test_full_scan_repairs_differences_in_both_compare_directions_with_every_algorithm(
    pair: Pair, rng: random.Random, compare: Compare, algorithm: Algorithm
) -> None:
    path, secondary, proxy = pair
    changed = sorted(rng.sample(range(BLOCKS), 40))
    corrupt(path, changed, rng)
    with open_primary(path, proxy, compare=compare, algorithm=algorithm) as p:
        v = p.verify()
        assert (v.mode, v.algorithm, v.compare) == ("verify", algorithm, compare)
        assert v.mismatched == len(changed)
        assert not v.coherent
        flat = [b for start, count in v.mismatched_ranges for b in range(start, start + count)]
        assert flat == changed
        assert read(path) != read(secondary.volume)  # verify repairs nothing
        seen: list[tuple[int, int]] = []
        r = p.resync(full=True, progress=lambda done, total: seen.append((done, total)))
        assert (r.mode, r.algorithm, r.compare) == ("full-scan", algorithm, compare)
        assert seen and seen[-1][0] <= seen[-1][1] == BLOCKS
        assert r.mismatched == len(changed)
        assert r.blocks_sent == len(changed)
        d = r.to_dict()
        for key in ("mode", "blocks", "mismatched", "bytes_sent", "bytes_received", "seconds"):
            assert d[key] == getattr(r, key)
        assert p.verify().coherent
        # The primary's scan is what hashlib/zlib say of the secondary's bytes now.
        m = p.scan()
        assert m.algorithm == algorithm
        data = read(secondary.volume)
        for b in changed[:5]:
            block = data[b * BLOCK : (b + 1) * BLOCK]
            want = (
                __import__("zlib").crc32(block).to_bytes(4, "big")
                if algorithm == "crc32"
                else hashlib.new(algorithm, block).digest()
            )
            assert m[b] == want
        assert m == mirror.scan(secondary.volume, algorithm=algorithm)
    assert_equal(path, secondary.volume)


def test_periodic_scan_finds_and_repairs_silent_corruption_on_the_secondary(
    pair: Pair, rng: random.Random
) -> None:
    path, secondary, proxy = pair
    with open_primary(path, proxy, interval=2.0, rate=256.0, auto_resync=True) as p:
        wait_until(lambda: p.status().last_report is not None, what="first resync")
        random_writes(p, path, rng, 10)
        # The corruption lands while the link is down: a periodic scan under way then fails,
        # and the first one after the reconnection starts `interval` after it, so that one
        # scan finds all of it however slowly this machine runs.
        proxy.cut()
        wait_until(lambda: p.status().state == "disconnected", what="link down")
        bad = sorted(rng.sample(range(BLOCKS), 5))
        corrupt(secondary.volume, bad, rng)
        assert read(path) != read(secondary.volume)
        proxy.restore()
        found = []

        def repaired() -> bool:
            r = p.status().last_report
            if r is not None and r.mode == "periodic" and r.mismatched > 0:
                found.append(r)
            return bool(found)

        wait_until(repaired, timeout=60, what="periodic scan repair")
        r = found[0]
        assert r.mismatched == len(bad) and r.blocks_sent == len(bad)
        assert_equal(path, secondary.volume)


def test_size_mismatch_is_refused_at_handshake(
    tmp_path: Path,
    start_secondary: Callable[..., SecondaryProcess],
) -> None:
    secondary = start_secondary(SIZE)
    path = make_volume(tmp_path / "small.img", SIZE // 2)
    with mirror.Primary(path, peer=secondary.address, link_timeout=1.0) as p:
        with pytest.raises(mirror.MismatchError) as e:
            p.wait_connected(5)
        assert str(SIZE) in str(e.value) and str(SIZE // 2) in str(e.value)
        assert isinstance(e.value, ValueError)
    assert read(secondary.volume) == bytes(SIZE)


def test_shared_secret_authenticates_and_a_wrong_one_is_refused(
    tmp_path: Path,
    start_secondary: Callable[..., SecondaryProcess],
    rng: random.Random,
) -> None:
    good = tmp_path / "good.secret"
    good.write_text("correct horse battery staple\n")
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("incorrect horse battery\n")
    secondary = start_secondary(SIZE, secret_file=good)
    path = make_volume(tmp_path / "p.img", SIZE)
    with mirror.Primary(path, peer=secondary.address, secret_file=wrong, link_timeout=1.0) as p:
        with pytest.raises(mirror.AuthError):
            p.wait_connected(5)
        assert p.write(0, rng.randbytes(BLOCK)) == "degraded"
    with mirror.Primary(path, peer=secondary.address, secret_file=good, auto_resync=False) as p:
        p.wait_connected(20)
        p.resync()
        assert p.write(BLOCK, rng.randbytes(BLOCK)) == "replicated"
    assert_equal(path, secondary.volume)


def test_mutual_tls_with_keygen_identities_and_a_refused_stranger(
    tmp_path: Path, rng: random.Random
) -> None:
    from conftest import MIRROR_BIN

    if MIRROR_BIN is None:
        if os.environ.get("CI"):
            pytest.fail("the mirror binary is required in CI (mirror keygen)")
        pytest.skip("no mirror binary for mirror keygen")
    for name in ("p", "s", "stranger"):
        subprocess.run([MIRROR_BIN, "keygen", str(tmp_path), "--name", name], check=True,
                       stdout=subprocess.DEVNULL)
    key = lambda n: tmp_path / f"{n}.key"  # noqa: E731
    crt = lambda n: tmp_path / f"{n}.crt"  # noqa: E731
    spath = make_volume(tmp_path / "s.img", SIZE)
    path = make_volume(tmp_path / "p.img", SIZE, rng.randbytes(SIZE))
    with mirror.Secondary(spath, tls_cert=crt("s"), tls_key=key("s"), tls_trust=crt("p")) as s:
        with mirror.Primary(path, peer=s.address, tls_cert=crt("p"), tls_key=key("p"),
                            tls_trust=crt("s")) as p:
            p.wait_connected(20)
            p.resync()
            assert p.write(0, rng.randbytes(BLOCK)) == "replicated"
            assert p.verify().coherent
        assert_equal(path, spath)
        # A primary that trusts someone else refuses the secondary, naming why.
        with mirror.Primary(path, peer=s.address, tls_cert=crt("p"), tls_key=key("p"),
                            tls_trust=crt("stranger")) as p:
            with pytest.raises(mirror.AuthError, match="not in the trust file"):
                p.wait_connected(20)


def test_another_thread_runs_while_a_resync_waits_on_the_network(
    pair: Pair, rng: random.Random
) -> None:
    import threading

    path, secondary, proxy = pair
    corrupt(path, list(range(0, BLOCKS, 2)), rng)
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=count)
    with open_primary(path, proxy) as p:
        t.start()
        try:
            r = p.resync()
        finally:
            done.set()
            t.join()
    assert r.mismatched == BLOCKS // 2
    assert ticks > 1000
    assert_equal(path, secondary.volume)


def test_ctrl_c_interrupts_a_long_resync_and_the_primary_stays_usable(
    tmp_path: Path,
    start_secondary: Callable[..., SecondaryProcess],
    proxy_to: Callable[[str], Proxy],
) -> None:
    import signal
    import threading
    import time

    big = 16 << 30  # sparse on both sides; a full sha1 scan of it takes many seconds
    secondary = start_secondary(big, "big-secondary.img")
    proxy = proxy_to(secondary.address)
    path = make_volume(tmp_path / "big-primary.img", big)
    with open_primary(path, proxy, algorithm="sha1") as p:
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        try:
            start = time.monotonic()
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                p.resync(full=True)
            elapsed = time.monotonic() - start
        finally:
            timer.cancel()
            timer.join()
            signal.signal(signal.SIGINT, old)
        assert elapsed < 10.0, f"took {elapsed:.1f}s to stop"
        p.wait_connected(20)
        assert p.write(0, b"x" * BLOCK) in ("replicated", "degraded")
        assert p.status().state in ("connected", "resyncing", "disconnected")


def test_replicate_and_mark_dirty_ship_what_the_caller_wrote_itself(
    pair: Pair, rng: random.Random
) -> None:
    path, secondary, proxy = pair
    with open_primary(path, proxy) as p:
        p.resync()
        # The storage stack wrote these itself; replicate sends them.
        data = rng.randbytes(3 * BLOCK)
        with open(path, "r+b") as f:
            f.seek(10 * BLOCK)
            f.write(data)
        assert p.replicate(10 * BLOCK, memoryview(data)) == "replicated"
        assert read(secondary.volume)[10 * BLOCK : 13 * BLOCK] == data
        # Written behind mirror's back, then declared: the next resync ships it.
        corrupt(path, [100, 101, 700], rng)
        p.mark_dirty(100 * BLOCK, 2 * BLOCK)
        p.mark_dirty(700 * BLOCK, 1)
        assert p.status().dirty_regions >= 2
        r = p.resync()
        assert r.mode == "dirty-map"
        assert r.mismatched == 3
    assert_equal(path, secondary.volume)


def test_python_secondary_in_process(tmp_path: Path, rng: random.Random) -> None:
    ppath = make_volume(tmp_path / "p.img", SIZE)
    spath = tmp_path / "s.img"
    with mirror.Secondary(spath, create=SIZE) as s, mirror.Primary(
        ppath, peer=s.address, auto_resync=False
    ) as p:
        p.wait_connected(20)
        p.resync()
        random_writes(p, ppath, rng, 20)
        st = s.status()
        assert st.connections == 1 and st.writes_applied >= 20
        assert st.peer is not None
    assert_equal(ppath, spath)


def test_report_fields_are_those_of_the_command_json_report(
    tmp_path: Path, pair: Pair, rng: random.Random
) -> None:
    import json
    import subprocess

    from conftest import MIRROR_BIN

    if MIRROR_BIN is None:
        pytest.skip("needs the mirror binary")
    path, secondary, proxy = pair
    corrupt(path, [1, 2, 3], rng)
    out = subprocess.run(
        [MIRROR_BIN, "verify", str(path), "--peer", secondary.address, "--json"]
        + ["--algorithm", "crc32"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    cli = json.loads(out.stdout)
    with open_primary(path, proxy, algorithm="crc32") as p:
        report = p.verify().to_dict()
    assert set(report) == set(cli) - {"command"}
    for key in ("mode", "blocks", "mismatched", "coherent", "mismatched_ranges", "algorithm"):
        assert report[key] == cli[key], key


def test_a_resync_beside_writes_yields_and_its_eta_is_in_the_status(
    pair: Pair, rng: random.Random
) -> None:
    path, secondary, proxy = pair
    corrupt(path, list(range(0, BLOCKS, 7)), rng)
    with open_primary(path, proxy, resync_min_rate=2.0, resync_max_rate=64.0) as p:
        st = p.status()
        assert st.job_remaining_bytes == 0 and st.job_eta_seconds is None
        random_writes(p, path, rng, 20)
        report = p.resync()
        assert report.mode == "full-scan" and report.blocks == BLOCKS
        random_writes(p, path, rng, 20)
        st = p.status()
        assert st.job_remaining_bytes == 0 and st.job_eta_seconds == 0.0
    assert_equal(path, secondary.volume)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resync_min_rate": 0.0},
        {"resync_min_rate": float("nan")},
        {"resync_min_rate": 64.0, "resync_max_rate": 8.0},
        {"resync_max_rate": -1.0},
    ],
)
def test_bad_resync_rates_are_refused(pair: Pair, kwargs: dict[str, float]) -> None:
    path, _, proxy = pair
    with pytest.raises(mirror.ConfigError):
        mirror.Primary(path, peer=proxy.address, **kwargs)  # type: ignore[arg-type]
