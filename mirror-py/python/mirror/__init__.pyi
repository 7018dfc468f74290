"""mirror: keep a secondary block volume coherent with a primary over TCP."""

from mirror._errors import (
    AuthError as AuthError,
    BusyError as BusyError,
    ClosedError as ClosedError,
    ConfigError as ConfigError,
    LinkError as LinkError,
    MirrorError as MirrorError,
    MirrorIOError as MirrorIOError,
    MismatchError as MismatchError,
    ProtocolError as ProtocolError,
    RemoteIOError as RemoteIOError,
)
from mirror._mirror import (
    Primary as Primary,
    Report as Report,
    ScanMap as ScanMap,
    Secondary as Secondary,
    SecondaryStatus as SecondaryStatus,
    Status as Status,
    __version__ as __version__,
    scan as scan,
)

__all__ = [
    "AuthError",
    "BusyError",
    "ClosedError",
    "ConfigError",
    "LinkError",
    "MirrorError",
    "MirrorIOError",
    "MismatchError",
    "Primary",
    "ProtocolError",
    "RemoteIOError",
    "Report",
    "ScanMap",
    "Secondary",
    "SecondaryStatus",
    "Status",
    "__version__",
    "scan",
]
