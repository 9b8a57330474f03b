"""When a running sidecar should read its configuration files again.

The files are polled (`files.signature()`: name, inode, size, mtime of each). A file modified in
place (or new) is read only once it has been quiet for `SETTLE_SECONDS`, so a file rewritten in
place (`cat > file`, an editor's truncate-then-write) is not read between the truncate and the
last write; a name replaced by a rename is read at once; the read itself is checked for a write
in progress (`files.ConfigChanging`). A change that was read, well or badly, is `mark()`ed and not retried
until the files change again; one that was not read (still settling, changing during the read) is
looked at again at the next poll.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence, Tuple

from fastproxy.config.files import signature
from fastproxy.config.loader import Config
from fastproxy.errors import ConfigError

#: how long a file written in place (or new) must be unmodified before it is read: editors and
#: `cat > file` write a configuration file in milliseconds; changes then apply within ~0.7 s
SETTLE_SECONDS = 0.5


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
        """0 when every file that changed since the last read is safe to read now, else how
        much longer to wait. Safe: a name now standing for another inode (replaced by a
        rename, as Kubernetes' symlink swap, `fastproxy patch` and most editors do: the new
        file was complete before it got the name), or a file unmodified for `settle` seconds
        (written in place, or new). A clock far off either way does not hold a change back."""
        before = {e[0]: e for e in self.read_signature}
        wait = 0.0
        for e in sig:
            if len(e) != 4 or e in self.read_signature:
                continue  # an error entry, or unchanged
            old = before.get(e[0])
            if old is not None and len(old) == 4 and old[1] != e[1]:
                continue  # renamed into place
            age = abs(time.time() - e[3] / 1e9)
            if age < self.settle:
                wait = max(wait, self.settle - age + 0.01)
        return wait

    def next_wait(self, poll: float) -> float:
        """How long the poller may sleep: `poll`, or less while a change is settling."""
        return min(poll, self._wait) if self._wait > 0 else poll


def check_successor(old: Config, new: Config) -> None:
    """Raise ConfigError when `new` may not replace `old` in a running sidecar: the MeshConfig
    (or Pipy sidecar config) the running configuration came from has disappeared from the files
    (deleted, or an editor's delete-then-write caught half way). Without it the embedded default
    would apply (egress passthrough on): a reload never falls back to it; a restart may."""
    if old.mesh.file is not None and new.mesh.file is None and new.pipy is None:
        raise ConfigError(f"{old.mesh.ref} is no longer in the configuration files; a reload "
                          f"does not fall back to the embedded default (restart for that)",
                          file=old.mesh.file)
    if old.pipy is not None and new.pipy is None and new.mesh.file is None:
        raise ConfigError(f"{old.pipy.ref} is no longer in the configuration files; a reload "
                          f"does not fall back to the embedded default (restart for that)",
                          file=old.pipy.file)
