"""Process logging: FSM's sidecar log levels mapped onto Python's logging, one line per event on
stderr (the container log)."""
from __future__ import annotations

import logging
import sys

# FSM / Pipy level names (spec.sidecar.logLevel) -> logging levels; "off" silences everything.
LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}

log = logging.getLogger("fastproxy")

#: Start, reload and exit lines: shown at every level but "off" (FSM's default level is error,
#: and an operator must still see where the sidecar listens and what each reload did).
NOTICE = logging.CRITICAL + 5
logging.addLevelName(NOTICE, "NOTICE")


def notice(msg: str, *args: object) -> None:
    log.log(NOTICE, msg, *args)


def setup(level: str) -> None:
    """Send fastproxy's log to stderr at `level` (an FSM level name)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    set_level(level)


def set_level(level: str) -> None:
    log.setLevel(LEVELS.get(level.lower(), logging.ERROR))
