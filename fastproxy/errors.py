"""The project's error hierarchy: every error fastproxy raises on purpose derives from
FastproxyError and says where it comes from (file, object, field path) when that is known."""
from __future__ import annotations

from typing import Optional


class FastproxyError(Exception):
    """Base class. `str()` reads `file: Kind ns/name: field.path: message`, omitting unknown parts."""

    def __init__(self, message: str, *, file: Optional[str] = None, obj: Optional[str] = None,
                 field: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.obj = obj
        self.field = field

    def __str__(self) -> str:
        parts = [_clip(p) for p in (self.file, self.obj, self.field) if p]
        return ": ".join(parts + [_clip(self.message, 1000)])


def _clip(text: str, n: int = 300) -> str:
    """`text` cut to about n characters, its middle elided (the end often says what is wrong):
    names and values quoted from a hostile file may be megabytes long, and every message goes
    to a log line and to /stats."""
    if len(text) <= n:
        return text
    half = (n - 24) // 2
    return f"{text[:half]}...({len(text)} chars)...{text[-half:]}"


class ConfigError(FastproxyError):
    """A configuration file or object is unreadable or invalid."""


class ConfigErrors(ConfigError):
    """Several configuration errors found in one load; `errors` holds each of them."""

    def __init__(self, errors: "list[ConfigError]") -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class InterceptionError(FastproxyError):
    """Interception rules could not be rendered, applied or removed."""


class EngineError(FastproxyError):
    """The C data plane refused an operation; `errno` holds the cause."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno
