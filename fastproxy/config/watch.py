"""When a running sidecar should read its configuration files again.

The files are polled (`files.signature()`: name, inode, size, mtime of each). A change is acted on
only once the files have been quiet for `SETTLE_SECONDS` (their newest mtime is that old), so a
file rewritten in place (`cat > file`, an editor's truncate-then-write) is not read between the
truncate and the last write; the read itself is checked for a write in progress
(`files.ConfigChanging`). A change that was read, well or badly, is `mark()`ed and not retried
until the files change again; one that was not read (still settling, changing during the read) is
looked at again at the next poll.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence, Tuple

from fastproxy.config.files import newest_mtime, signature

#: how long the configuration files must be unmodified before a change is read
SETTLE_SECONDS = 1.0


class ConfigWatcher:
    """Tracks the signature of the configuration last read and says when to read again."""

    def __init__(self, paths: Sequence["str | os.PathLike[str]"],
                 settle: float = SETTLE_SECONDS) -> None:
        self.paths = list(paths)
        self.settle = settle
        self.read_signature: Tuple[Any, ...] = signature(self.paths) if self.paths else ()
        self._wait = 0.0

    def mark(self, sig: Tuple[Any, ...]) -> None:
        """The files with this signature have been read (whatever the outcome)."""
        self.read_signature = sig

    def changed(self) -> bool:
        """The files differ from the last read and have been quiet long enough to read now."""
        self._wait = 0.0
        if not self.paths:
            return False
        sig = signature(self.paths)
        if sig == self.read_signature:
            return False
        self._wait = self.unsettled(sig)
        return self._wait == 0.0

    def unsettled(self, sig: Tuple[Any, ...]) -> float:
        """0 when the files of `sig` have been quiet for `settle` seconds, else how much longer
        to wait. (A clock far off either way does not hold a change back.)"""
        age = abs(time.time() - newest_mtime(sig))
        return self.settle - age + 0.01 if age < self.settle else 0.0

    def next_wait(self, poll: float) -> float:
        """How long the poller may sleep: `poll`, or less while a change is settling."""
        return min(poll, self._wait) if self._wait > 0 else poll
