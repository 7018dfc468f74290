"""State that survives restarts and second primaries, from Python: identities, adopt, split
brain, the secondary's consistent flag. The secondary is ``mirror serve`` in another process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

import mirror
from conftest import BLOCK, SecondaryProcess, make_volume, read

SIZE = 1 << 20


def sync(volume: Path, peer: str, **kw: object) -> mirror.Report:
    with mirror.Primary(volume, peer=peer, auto_resync=False, link_timeout=2.0, **kw) as p:  # type: ignore[arg-type]
        report = p.resync(full=True, timeout=20)
    return report


def test_a_bound_secondary_refuses_another_volume_until_adopted(
    tmp_path: Path, start_secondary: Callable[..., SecondaryProcess]
) -> None:
    a = make_volume(tmp_path / "a.img", SIZE, os.urandom(SIZE))
    b = make_volume(tmp_path / "b.img", SIZE, os.urandom(SIZE))
    sec = start_secondary(SIZE, "s.img")
    sync(a, sec.address)
    with pytest.raises(mirror.MismatchError, match="identity mismatch"):
        sync(b, sec.address)
    assert read(sec.volume) == read(a)
    sync(b, sec.address, adopt=True)
    assert read(sec.volume) == read(b)
    assert (tmp_path / "a.img.mirror-meta").exists()


def test_meta_option_puts_the_record_where_it_is_told(tmp_path: Path) -> None:
    a = make_volume(tmp_path / "a.img", SIZE)
    s = make_volume(tmp_path / "s.img", SIZE)
    meta = tmp_path / "elsewhere.meta"
    with mirror.Secondary(s, meta=meta) as sec:
        status = sec.status()
        assert status.consistent
        assert len(status.identity) == 36
        assert status.bound_to is None
        sync(a, sec.address, meta=tmp_path / "a.meta")
        assert sec.status().bound_to is not None
        assert sec.status().consistent
    assert meta.exists() and (tmp_path / "a.meta").exists()
    assert not (tmp_path / "s.img.mirror-meta").exists()


def test_a_live_session_holds_the_secondary(
    tmp_path: Path, start_secondary: Callable[..., SecondaryProcess]
) -> None:
    a = make_volume(tmp_path / "a.img", SIZE, os.urandom(SIZE))
    sec = start_secondary(SIZE, "s.img")
    with mirror.Primary(a, peer=sec.address, link_timeout=2.0) as live:
        live.wait_connected(timeout=10)
        with pytest.raises(mirror.BusyError, match="held by session"):
            sync(a, sec.address)
        live.write(0, b"x" * BLOCK)
        live.resync(timeout=20)
    assert read(sec.volume) == read(a)
