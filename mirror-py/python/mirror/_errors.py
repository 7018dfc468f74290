"""The exception classes of mirror.

Which class an engine error becomes is decided in one place, by the error's kind
(``mirror-py/src/errors.rs``); this module only defines the classes and builds instances.
Every message is the engine's own text, the same line the ``mirror`` command prints.

Hierarchy::

    MirrorError
    ├── ConfigError (also ValueError)     bad argument or configuration value: offset,
    │   │                                 length, alignment, block size, names, secret
    │   └── MismatchError                 the two volumes or peers do not match: size, block
    │                                     size, version, identity, or a split brain
    ├── BusyError                         the secondary is held by another live session
    ├── LinkError (also ConnectionError)  the link could not be made, was lost, timed out
    ├── ProtocolError                     the peer broke the wire protocol
    ├── AuthError                         shared-secret authentication failed
    ├── ClosedError                       the object was closed
    └── MirrorIOError (also OSError)      local I/O failed; the instance is also the
        │                                 built-in OSError subclass of its errno
        │                                 (FileNotFoundError, PermissionError, ...)
        └── RemoteIOError                 the secondary's volume failed (a full disk, a
                                          failed write or flush): not a link failure
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Type

__all__ = [
    "MirrorError",
    "ConfigError",
    "MismatchError",
    "BusyError",
    "LinkError",
    "ProtocolError",
    "AuthError",
    "ClosedError",
    "MirrorIOError",
    "RemoteIOError",
]


class MirrorError(Exception):
    """Root of every error mirror raises."""


class ConfigError(MirrorError, ValueError):
    """A bad argument or configuration value: an offset or length past the end of the
    volume or not block-aligned, a negative number, an unknown algorithm, mode or backend,
    an invalid block size, a bad secret. Also a ``ValueError``."""


class MismatchError(ConfigError):
    """The two volumes (size, block size, identity) or the two peers (protocol version) do
    not match, or their histories diverged (split brain); refused at handshake, nothing
    written. ``adopt=True`` or ``discard_secondary=True`` on the Primary says which side
    wins."""


class BusyError(MirrorError):
    """The secondary is held by another primary session whose link is alive; refused at
    handshake without disturbing that session."""


class LinkError(MirrorError, ConnectionError):
    """The link to the peer could not be set up, was lost, or timed out. Also a
    ``ConnectionError``."""


class ProtocolError(MirrorError):
    """The peer sent something that breaks the wire protocol."""


class AuthError(MirrorError):
    """The peer failed to prove the shared secret, or asked for one we do not have."""


class ClosedError(MirrorError):
    """The object was closed."""


class MirrorIOError(MirrorError, OSError):
    """An I/O error on a local volume. ``errno``, ``strerror`` and ``filename`` are those of
    the OS error; the instance's class also derives from the built-in ``OSError`` subclass
    that errno maps to (``FileNotFoundError``, ``PermissionError``, ...), so
    ``except FileNotFoundError`` catches it."""

    #: True when the failing volume is the secondary's (:class:`RemoteIOError`).
    remote: bool = False

    def __str__(self) -> str:
        # The engine's message already names the path, the operation and the OS error.
        return str(self.args[0]) if self.args else OSError.__str__(self)


class RemoteIOError(MirrorIOError):
    """An I/O error on the secondary's volume, as the secondary reported it: ``errno`` and
    ``strerror`` are the secondary's OS error, ``filename`` its volume. The link is fine; the
    secondary's disk is not (full, read-only, failing)."""

    remote = True


_IO_CLASSES: Dict[Type[OSError], Type[MirrorIOError]] = {}


def _io_class(errno: Optional[int]) -> Type[MirrorIOError]:
    """The MirrorIOError class for ``errno``: one that also derives from the built-in
    OSError subclass Python itself picks for that errno."""
    if errno is None:
        return MirrorIOError
    builtin = type(OSError(errno, os.strerror(errno)))
    if builtin is OSError:
        return MirrorIOError
    cls = _IO_CLASSES.get(builtin)
    if cls is None:
        name = "Mirror" + builtin.__name__
        cls = type(
            name,
            (MirrorIOError, builtin),
            {
                "__module__": __name__,
                "__qualname__": name,
                "__doc__": f"A MirrorIOError that is also a {builtin.__name__}.",
            },
        )
        _IO_CLASSES[builtin] = cls
    return cls


def _make(
    name: str, message: str, errno: Optional[int], filename: Optional[str]
) -> MirrorError:
    """Builds the exception called ``name`` (a class of this module) for an engine error."""
    if name == "MirrorIOError":
        exc = _io_class(errno)(message)
        if errno is not None:
            exc.errno = errno
            exc.strerror = os.strerror(errno)
        exc.filename = filename
        return exc
    if name == "RemoteIOError":
        exc = RemoteIOError(message)
        if errno is not None:
            exc.errno = errno
            exc.strerror = os.strerror(errno)
        exc.filename = filename
        return exc
    cls = globals()[name]
    assert isinstance(cls, type) and issubclass(cls, MirrorError)
    return cls(message)
