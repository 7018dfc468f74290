"""mirror: keep a secondary block volume coherent with a primary over TCP.

- :class:`Primary` writes and replicates, tracks what the secondary lacks in a dirty map
  while the link is down, and resyncs (from the dirty map, or by a full checksum scan).
- :class:`Secondary` serves a volume to a primary.
- :func:`scan` gives the per-block digests (crc32, md5, sha1) of a file or block device.

Errors derive from :class:`MirrorError`; see ``mirror._errors`` for the hierarchy.
"""

from mirror._errors import (
    AuthError,
    BusyError,
    ClosedError,
    ConfigError,
    LinkError,
    MirrorError,
    MirrorIOError,
    MismatchError,
    ProtocolError,
    RemoteIOError,
)
from mirror._mirror import (
    Primary,
    Report,
    ScanMap,
    Secondary,
    SecondaryStatus,
    Status,
    __version__,
    scan,
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
