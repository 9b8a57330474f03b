"""Which files a load reads, and reading them as one consistent snapshot.

* A path may be a file (read whatever its name) or a folder: its `*.yaml`, `*.yml` and `*.json`
  entries, sorted by name, not recursing; names starting with `.` are skipped (a ConfigMap mounted
  by Kubernetes holds `..data` and `..2024_...` entries beside symlinks to the real files).
* Every file is read whole, within `limits.MAX_FILE_BYTES` each (a larger file is refused from its
  `stat()`, unread) and `limits.MAX_TOTAL_BYTES` together, before any is decoded.
* `signature()` (name, inode, size, mtime of every entry, following symlinks) is taken before and
  after the reads: when it moved, a file was being written while it was read, and the snapshot
  raises `ConfigChanging` instead of offering a torn view.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple, Union

from fastproxy.config import limits
from fastproxy.errors import ConfigError

EXTENSIONS = (".yaml", ".yml", ".json")

PathLike = Union[str, "os.PathLike[str]"]


class ConfigChanging(ConfigError):
    """The configuration files changed while they were being read; read them again later."""


def collect_files(paths: Sequence[PathLike]) -> Tuple[List[str], List[ConfigError]]:
    """The files a list of paths names, in load order, each once."""
    files: List[str] = []
    errors: List[ConfigError] = []
    seen: set = set()

    def add(p: str) -> None:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            files.append(p)

    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            try:
                names = sorted(os.listdir(p))
            except OSError as e:
                errors.append(ConfigError(f"cannot list folder: {e.strerror or e}", file=p))
                continue
            for name in names:
                full = os.path.join(p, name)
                if name.startswith(".") or not name.endswith(EXTENSIONS) or not os.path.isfile(full):
                    continue
                add(full)
        elif os.path.isfile(p):
            add(p)
        elif os.path.lexists(p):
            errors.append(ConfigError("not a regular file or folder", file=p))
        else:
            errors.append(ConfigError("no such file or folder", file=p))
    return files, errors


def signature(paths: Sequence[PathLike]) -> Tuple[Any, ...]:
    """What identifies the current content of the configuration paths: (name, inode, size,
    mtime) of every entry, following symlinks, so a ConfigMap's atomic symlink swap changes it."""
    sig: List[Tuple[Any, ...]] = []
    for p in (os.fspath(x) for x in paths):
        try:
            if os.path.isdir(p):
                names = sorted(n for n in os.listdir(p) if not n.startswith("."))
                entries = [os.path.join(p, n) for n in names]
            else:
                entries = [p]
            for f in entries:
                try:
                    st = os.stat(f)
                    sig.append((f, st.st_ino, st.st_size, st.st_mtime_ns))
                except OSError as e:
                    sig.append((f, "error", e.errno))
        except OSError as e:
            sig.append((p, "error", e.errno))
    return tuple(sig)


@dataclass
class Snapshot:
    """The bytes of every configuration file of one load, read together."""

    files: List[str] = field(default_factory=list)
    contents: List[Optional[bytes]] = field(default_factory=list)  # parallel to `files`; None: unread
    errors: List[ConfigError] = field(default_factory=list)
    signature: Tuple[Any, ...] = ()


def read_file(path: str, budget: Optional[int] = None) -> bytes:
    """One file's bytes, refused (ConfigError) when larger than MAX_FILE_BYTES or `budget`,
    without reading more than the cap."""
    if budget is None:
        budget = limits.MAX_TOTAL_BYTES
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            cap = min(limits.MAX_FILE_BYTES, budget)
            if size > cap:
                raise _too_big(path, size, budget)
            raw = f.read(cap + 1)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=path) from None
    if len(raw) > cap:
        raise _too_big(path, len(raw), budget)
    return raw


def _too_big(path: str, size: int, budget: int) -> ConfigError:
    if size > limits.MAX_FILE_BYTES:
        return ConfigError(f"{size} bytes, larger than the {limits.MAX_FILE_BYTES}-byte limit "
                           f"for one file", file=path)
    return ConfigError(f"the configuration files together are larger than the "
                       f"{limits.MAX_TOTAL_BYTES}-byte limit", file=path)


def read_snapshot(paths: Sequence[PathLike]) -> Snapshot:
    """Read every file the paths name. Errors of single files are collected in `errors`;
    raises ConfigChanging when the files changed during the reads."""
    before = signature(paths)
    files, errors = collect_files(paths)
    snap = Snapshot(files=files, errors=errors, signature=before)
    if len(files) > limits.MAX_FILES:
        snap.errors.append(ConfigError(f"{len(files)} configuration files, more than the limit of "
                                       f"{limits.MAX_FILES}", file=os.fspath(paths[0])))
        snap.files = []
        return snap
    left = limits.MAX_TOTAL_BYTES
    for f in files:
        raw: Optional[bytes] = None
        try:
            raw = read_file(f, left)
            left -= len(raw)
        except ConfigError as e:
            snap.errors.append(e)
        snap.contents.append(raw)
    if signature(paths) != before:
        raise ConfigChanging("changed while being read (a write in progress); read again later",
                             file=os.fspath(paths[0]) if len(paths) == 1 else None)
    return snap
