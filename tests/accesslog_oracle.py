"""The access log's line format as plain Python (the reference the C formatter, fp_obs_format in
src_c/fp_obs_fmt.c, is tested against): the JSON object of one record, in the README's field
order, written with json.dumps(separators=(",", ":"))."""
from __future__ import annotations

import ipaddress
import json
import time
from typing import Any, Dict, Optional


def rfc3339(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac // 1000:06d}Z"


def hostport(packed: bytes, port: int) -> str:
    ip = str(ipaddress.ip_address(packed))
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def line(kind: str, start_ns: int, dur_us: int, src: bytes, sport: int, dst: bytes, dport: int,
         action: str, by: Optional[str], reason: str, would_deny: bool, end: str, host: bytes,
         tls: bool, method: str, path: bytes, status: int, c2u: int, u2c: int) -> str:
    """One line (without its newline). Names (action, reason, end, method) as the tables in
    fastproxy._core give them; host and path as the bytes the relay kept (read as Latin-1)."""
    obj: Dict[str, Any] = {
        "time": rfc3339(start_ns),
        "type": "request" if kind == "http" else "connection",
        "source": hostport(src, sport),
        "destination": hostport(dst, dport),
        "decision": "would_deny" if would_deny else action,
    }
    if by:
        obj["by"] = by
    elif action == "passthrough" and not would_deny:
        obj["by"] = "passthrough"
    if reason and (would_deny or action == "deny"):
        obj["reason"] = reason
    host_s = host.split(b"\0", 1)[0].decode("latin-1")
    if host_s:
        obj["sni" if tls else "host"] = host_s
    if kind == "http":
        obj["method"] = method
        obj["path"] = path.split(b"\0", 1)[0].decode("latin-1")
        obj["status"] = status
    obj["bytes_sent"] = c2u
    obj["bytes_received"] = u2c
    obj["duration_ms"] = round(dur_us / 1000.0, 3)
    obj["end"] = end
    return json.dumps(obj, separators=(",", ":"))
