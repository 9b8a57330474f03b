"""The access log: one JSON line on stdout per finished egress connection and per HTTP request on
the http-policy path, written by a Python thread that drains the C core's per-worker rings in
batches; the lines are formatted in C (fp_obs_format, src_c/fp_obs_fmt.c), this module only
names the objects rule ids stand for and writes. The byte path never waits for it: a full ring drops records (counted as
`fastproxy_access_log_dropped_total`), never traffic.

Which lines are written is a property of the decision table a connection was admitted under
(MeshConfig `spec.observability.fastproxyAccessLog`, see `AccessLogSettings`): denials and
audit-mode "would deny" lines always; mesh and allow lines always; passthrough lines all, none
or a sampled share.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, Dict, Optional, Sequence, Tuple

from fastproxy import _core

DRAIN_SECONDS = 0.1
BUSY_DRAIN_SECONDS = 0.01
BUSY_RECORDS = 256
BATCH = 4096
#: tables whose rule names are remembered for records still to come (older: "rule N")
KEEP_TABLES = 64


@dataclass(frozen=True)
class AccessLogSettings:
    """`spec.observability.fastproxyAccessLog` (and audit mode, which shapes the same records)."""

    enabled: bool = True
    passthrough: str = "all"  # all | none | sample
    sample_rate: float = 0.01  # share of passthrough lines kept when passthrough == "sample"

    def passthrough_share(self) -> float:
        return {"all": 1.0, "none": 0.0}.get(self.passthrough, self.sample_rate)


class RuleNames:
    """Rule id -> the object that made it, per table id: the compile metadata of every table the
    sidecar installed recently (a record names the table it was admitted under)."""

    def __init__(self) -> None:
        self._tables: "OrderedDict[int, Sequence[str]]" = OrderedDict()
        self._json: Dict[Tuple[int, int], bytes] = {}
        self._lock = threading.Lock()

    def add(self, table_id: int, sources: Sequence[str]) -> None:
        with self._lock:
            self._tables[table_id] = list(sources)
            while len(self._tables) > KEEP_TABLES:
                old, _ = self._tables.popitem(last=False)
                self._json = {k: v for k, v in self._json.items() if k[0] != old}

    def name(self, table_id: int, rule: int) -> Optional[str]:
        if rule < 0:
            return None
        with self._lock:
            sources = self._tables.get(table_id)
        return rule_object(sources, rule) if sources is not None else f"rule {rule}"

    def by_json(self, table_id: int, rule: int) -> Optional[bytes]:
        """The access log's `by` value for a record naming `rule`: the JSON string literal of
        name(), remembered per table and rule."""
        key = (table_id, rule)
        got = self._json.get(key)
        if got is None:
            name = self.name(table_id, rule)
            if not name:
                return None
            got = json.dumps(name).encode()
            if table_id in self._tables:  # names of forgotten tables are not worth keeping
                self._json[key] = got
        return got


def rule_object(sources: Sequence[str], rule: int) -> str:
    """The object a C rule id stands for, from the compile metadata of its table (today
    tables.compile_table's per-rule `sources` list): `Egress ns/name`, `Service ns/name`, ..."""
    if 0 <= rule < len(sources):
        return sources[rule]
    return f"rule {rule}"


def policy_label(obj: str) -> str:
    """`namespace/name` of an object reference such as `Egress ns/name` (metrics labels)."""
    return obj.split(" ", 1)[1].split(" ", 1)[0] if " " in obj else obj


class AccessLog:
    """Drains the engine's access-log rings every DRAIN_SECONDS on its own thread."""

    def __init__(self, engine: "_core.Engine", names: RuleNames, out: Optional[IO[str]] = None) -> None:
        self.engine = engine
        self.names = names
        self.out = out
        # Lines go to a descriptor of their own (a copy of stdout's) with os.write: a stdout
        # nobody reads blocks this thread only, never a lock the rest of the process (or
        # Python's exit, which flushes sys.stdout) needs.
        self._fd = -1 if out is not None else os.dup(sys.stdout.fileno())
        self.lines = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()  # the rings have one reader at a time

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def drain_once(self) -> int:
        """Write every pending record; returns how many."""
        with self._lock:
            return self._drain()

    def _drain(self) -> int:
        total = 0
        while True:
            lines, n = _core.obs_drain_lines(self.engine, BATCH, self.names.by_json)
            if not n:
                return total
            try:
                self._write(lines)
            except (OSError, ValueError):
                pass  # stdout gone: the records are dropped, the sidecar goes on
            total += n
            self.lines += n
            if n < BATCH:
                return total

    def _write(self, lines: bytes) -> None:
        if self.out is not None:
            self.out.write(lines.decode("ascii"))
            self.out.flush()
            return
        data = memoryview(lines)
        while data:
            n = os.write(self._fd, data)
            data = data[n:]

    def _run(self) -> None:
        wait = DRAIN_SECONDS
        while not self._stop.wait(wait):
            # a busy interval (a burst of closes) is followed by a short one, so the rings
            # have room again sooner
            try:
                drained = self.drain_once()
            except Exception:  # noqa: BLE001 - the log must outlive a bad batch (it is lost)
                drained = 0
            wait = BUSY_DRAIN_SECONDS if drained >= BUSY_RECORDS else DRAIN_SECONDS

    def close(self) -> None:
        """Stop the thread after writing what is pending (call before the engine is freed). A
        writer stuck on a stdout nobody reads is left behind (its records are lost), so that
        it cannot hold up the exit."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
            if self._thread.is_alive():
                return
        self.drain_once()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
