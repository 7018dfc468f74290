"""Keeps a secondary block volume coherent with a primary over TCP (extension module)."""

import os
from types import TracebackType
from typing import Callable, Dict, List, Optional, Tuple, Type, Union, final

from typing_extensions import Buffer, Literal, Self

_Path = Union[str, "os.PathLike[str]"]
_Algorithm = Literal["crc32", "md5", "sha1"]
_Outcome = Literal["replicated", "queued", "degraded"]
_Progress = Optional[Callable[[int, int], object]]

__version__: str
DEFAULT_RATE_MIB_S: float

@final
class Report:
    """The result of a resync, a verify or a periodic scan."""

    @property
    def mode(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def compare(self) -> str: ...
    @property
    def blocks(self) -> int: ...
    @property
    def mismatched(self) -> int: ...
    @property
    def blocks_sent(self) -> int: ...
    @property
    def bytes_sent(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def mismatched_ranges(self) -> List[Tuple[int, int]]: ...
    @property
    def coherent(self) -> bool: ...
    def to_dict(self) -> Dict[str, object]: ...

@final
class Status:
    """A snapshot of a primary's state."""

    @property
    def state(self) -> str: ...
    @property
    def map_valid(self) -> bool: ...
    @property
    def dirty_regions(self) -> int: ...
    @property
    def dirty_bytes(self) -> int: ...
    @property
    def region_size(self) -> int: ...
    @property
    def pending_writes(self) -> int: ...
    @property
    def bytes_sent(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def connections(self) -> int: ...
    @property
    def last_error(self) -> Optional[str]: ...
    @property
    def last_report(self) -> Optional[Report]: ...
    @property
    def last_secondary_report(self) -> Optional[Report]: ...
    @property
    def degraded(self) -> bool: ...

@final
class SecondaryStatus:
    """A snapshot of a secondary's state."""

    @property
    def peer(self) -> Optional[str]: ...
    @property
    def connections(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def writes_applied(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def bytes_sent(self) -> int: ...
    @property
    def last_error(self) -> Optional[str]: ...
    @property
    def consistent(self) -> bool: ...
    @property
    def identity(self) -> str: ...
    @property
    def bound_to(self) -> Optional[str]: ...
    def lead_scans(self) -> int: ...
    @property
    def last_report(self) -> Optional[Report]: ...

@final
class ScanMap:
    """Per-block digests of a run of blocks, held as one bytes buffer."""

    @property
    def algorithm(self) -> str: ...
    @property
    def first(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def digest_size(self) -> int: ...
    @property
    def digests(self) -> bytes: ...
    def hex(self, i: int) -> str: ...
    def mismatches(self, other: ScanMap) -> List[Tuple[int, int]]: ...
    def __len__(self) -> int: ...
    def __getitem__(self, i: int, /) -> bytes: ...
    def __iter__(self) -> ScanMapIter: ...
    def __bytes__(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class ScanMapIter:
    """Iterator over a ScanMap's digests."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> bytes: ...

@final
class Primary:
    """The primary side of a mirrored pair."""

    def __new__(
        cls,
        volume: _Path,
        *,
        peer: str,
        algorithm: Optional[_Algorithm] = None,
        block_size: int = 4096,
        region_size: Optional[int] = None,
        mode: Literal["sync", "async"] = "sync",
        io: Literal["uring", "sync"] = "uring",
        secret_file: Optional[_Path] = None,
        interval: Optional[float] = None,
        rate: Optional[float] = None,
        compare: Literal["primary", "secondary"] = "primary",
        link_timeout: float = 5.0,
        queue_depth: int = 1024,
        auto_resync: bool = True,
        durability: Literal["flushed", "written", "received"] = "flushed",
        on_disconnect: Literal["degrade", "fail", "suspend"] = "degrade",
        suspend_timeout: float = 30.0,
        meta: Optional[_Path] = None,
        adopt: bool = False,
        discard_secondary: bool = False,
        write_intent: bool = False,
        tls_cert: Optional[_Path] = None,
        tls_key: Optional[_Path] = None,
        tls_trust: Optional[_Path] = None,
        allow_insecure: bool = False,
    ) -> Self: ...
    def write(self, offset: int, data: Buffer) -> _Outcome: ...
    def replicate(self, offset: int, data: Buffer) -> _Outcome: ...
    def mark_dirty(self, offset: int, length: int) -> None: ...
    def flush(self) -> None: ...
    def scan(
        self,
        algorithm: Optional[_Algorithm] = None,
        first: int = 0,
        count: Optional[int] = None,
        progress: _Progress = None,
    ) -> ScanMap: ...
    def resync(
        self, full: bool = False, timeout: Optional[float] = None, progress: _Progress = None
    ) -> Report: ...
    def verify(self, timeout: Optional[float] = None, progress: _Progress = None) -> Report: ...
    def wait_connected(self, timeout: float = 10.0) -> None: ...
    def status(self) -> Status: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def peer(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def compare(self) -> str: ...
    @property
    def block_size(self) -> int: ...
    @property
    def size(self) -> int: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        *_exc_info: Union[Optional[Type[BaseException]], Optional[BaseException], Optional[TracebackType]],
    ) -> bool: ...

@final
class Secondary:
    """The secondary side of a mirrored pair."""

    def __new__(
        cls,
        volume: _Path,
        listen: str = "127.0.0.1:0",
        *,
        secret_file: Optional[_Path] = None,
        block_size: int = 4096,
        io: Literal["uring", "sync"] = "uring",
        create: Optional[int] = None,
        allow_insecure: bool = False,
        link_timeout: float = 5.0,
        meta: Optional[_Path] = None,
        scan_on_connect: bool = False,
        interval: Optional[float] = None,
        rate: Optional[float] = None,
        compare: Literal["primary", "secondary"] = "secondary",
        algorithm: Optional[_Algorithm] = None,
        tls_cert: Optional[_Path] = None,
        tls_key: Optional[_Path] = None,
        tls_trust: Optional[_Path] = None,
    ) -> Self: ...
    @property
    def address(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def status(self) -> SecondaryStatus: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        *_exc_info: Union[Optional[Type[BaseException]], Optional[BaseException], Optional[TracebackType]],
    ) -> bool: ...

def scan(
    path: _Path,
    *,
    algorithm: Optional[_Algorithm] = None,
    block_size: int = 4096,
    io: Literal["uring", "sync"] = "uring",
    first: int = 0,
    count: Optional[int] = None,
    progress: _Progress = None,
) -> ScanMap: ...


__all__ = [
    "Primary",
    "Secondary",
    "Report",
    "ScanMap",
    "ScanMapIter",
    "SecondaryStatus",
    "Status",
    "scan",
    "__version__",
    "DEFAULT_RATE_MIB_S",
]
