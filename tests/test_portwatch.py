"""fastproxy/portwatch.py: growth of the engine's cx_connect_addrnotavail counter becomes one log
line per interval, naming the counter and the remedy (the e2e proof is test_ephemeral_ports.py)."""
from __future__ import annotations

import logging

import pytest

from fastproxy.portwatch import COUNTER, AddrNotAvailWatch


def test_one_line_per_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    w = AddrNotAvailWatch(interval=10.0, clock=lambda: now[0])
    caplog.set_level(logging.ERROR, logger="fastproxy")
    assert w.check({}) is None                      # an engine without the counter
    assert w.check({COUNTER: 0}) is None
    line = w.check({COUNTER: 3})
    assert line and "EADDRNOTAVAIL) 3 times" in line and "ip_local_port_range" in line
    now[0] += 5
    assert w.check({COUNTER: 7}) is None            # within the interval: held back
    now[0] += 5
    line = w.check({COUNTER: 9})
    assert line and ") 6 times" in line and f"{COUNTER}=9" in line
    now[0] += 60
    assert w.check({COUNTER: 9}) is None            # no growth, no line
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR]
    assert caplog.records[0].getMessage().startswith("upstream dials failing: no free local port")
