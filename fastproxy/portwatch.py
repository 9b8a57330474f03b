"""Makes a starved local port range visible: the sidecar's upstream dials share the pod's
ephemeral ports (net.ipv4.ip_local_port_range) with the app's own connections, and TIME_WAIT at
both ends of a close-heavy workload can use them all up. The engine counts dials that failed with
EADDRNOTAVAIL (`cx_connect_addrnotavail`); this turns the counter's growth into one log line per
interval, at error level so that the default log level shows it (the clients of those dials are
being refused)."""
from __future__ import annotations

import time
from typing import Callable, Mapping, Optional

from fastproxy.logs import log

COUNTER = "cx_connect_addrnotavail"
INTERVAL_SECONDS = 10.0


class AddrNotAvailWatch:
    """Call `check(engine_stats)` periodically; it logs (and returns) a line when the counter grew
    since the last line and the last line is at least `interval` seconds old. Stats without the
    counter (an engine that does not count it) never log."""

    def __init__(self, interval: float = INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.reported = 0
        self.logged_at: Optional[float] = None

    def check(self, stats: Mapping[str, object]) -> Optional[str]:
        count = int(stats.get(COUNTER, 0) or 0)  # type: ignore[call-overload]
        if count < self.reported:  # a new engine: start over
            self.reported = 0
        grew = count - self.reported
        now = self.clock()
        if grew <= 0 or (self.logged_at is not None and now - self.logged_at < self.interval):
            return None
        self.reported, self.logged_at = count, now
        line = (f"upstream dials failing: no free local port (EADDRNOTAVAIL) {grew} times "
                f"({COUNTER}={count}); the app's connections and TIME_WAIT use up the pod's "
                f"ephemeral ports: widen net.ipv4.ip_local_port_range, set net.ipv4.tcp_tw_reuse=1, "
                f"or use keep-alive connections")
        log.error("%s", line)
        return line
