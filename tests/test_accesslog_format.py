"""The access log's JSON lines, as the C formatter writes them (fp_obs_format, through
_core.obs_format): field names and order, escaping, durations, IPv6 brackets and compression,
byte for byte what the reference rendering (tests/accesslog_oracle.py) gives; and the object a
rule id stands for in the table the connection was admitted under."""
from __future__ import annotations

import ipaddress
import json
from typing import Any, Optional

from hypothesis import given, settings, strategies as st

import accesslog_oracle as oracle
from fastproxy import _core
from fastproxy.accesslog import KEEP_TABLES, RuleNames, policy_label

T0 = 1_764_469_482_285_307_000  # 2025-11-30T02:24:42.285307Z
NAME_OF_ACTION = {v: k for k, v in _core.ACTIONS.items()}


def fields(**kw: Any) -> dict:
    base = dict(kind="conn", start_ns=T0, dur_us=1500, src="198.51.100.1", sport=40000,
                dst="192.0.2.10", dport=443, action="deny", by=None, reason="sni-not-allowed",
                would_deny=False, end="denied", host=b"deny.test", tls=True, method="OTHER",
                path=b"", status=0, c2u=0, u2c=0)
    base.update(kw)
    for k in ("src", "dst"):
        if isinstance(base[k], str):
            base[k] = ipaddress.ip_address(base[k]).packed
    return base


def c_line(f: dict) -> str:
    """The C formatter's line for these fields (names turned into the enum values)."""
    reason = {v: k for k, v in _core.REASONS.items()}[f["reason"]]
    by: Optional[bytes] = json.dumps(f["by"]).encode() if f["by"] else None
    out = _core.obs_format(f["kind"], f["start_ns"], f["dur_us"], f["src"], f["sport"], f["dst"],
                           f["dport"], _core.ACTIONS[f["action"]], by, reason, f["would_deny"],
                           _core.ENDS.index(f["end"]), f["host"], f["tls"],
                           _core.METHODS.index(f["method"]), f["path"], f["status"], f["c2u"],
                           f["u2c"])
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    text = out[:-1].decode("ascii")  # ensure_ascii: never anything else
    assert text == oracle.line(**f), "C and the reference rendering differ"
    return text


def test_deny_line() -> None:
    line = json.loads(c_line(fields()))
    assert line == {"time": "2025-11-30T02:24:42.285307Z", "type": "connection",
                    "source": "198.51.100.1:40000", "destination": "192.0.2.10:443",
                    "decision": "deny", "reason": "sni-not-allowed", "sni": "deny.test",
                    "bytes_sent": 0, "bytes_received": 0, "duration_ms": 1.5, "end": "denied"}


def test_rule_names_follow_the_table_of_admission() -> None:
    names = RuleNames()
    names.add(1, ["Egress ns/a", "Service ns/svc"])
    names.add(2, ["Egress ns/b"])
    assert (names.by_json(1, 0), names.by_json(2, 0)) == (b'"Egress ns/a"', b'"Egress ns/b"')
    assert names.by_json(1, 1) == b'"Service ns/svc"' and names.by_json(1, -1) is None
    allow = json.loads(c_line(fields(action="allow", by="Egress ns/a", reason="")))
    assert allow["by"] == "Egress ns/a" and "reason" not in allow
    for i in range(3, 3 + KEEP_TABLES):
        names.add(i, [])
    assert names.by_json(1, 0) == b'"rule 0"'  # a table forgotten: the id is all there is
    assert policy_label("Egress ns/a") == "ns/a"


def test_request_and_would_deny_and_ipv6() -> None:
    line = json.loads(c_line(fields(kind="http", src="2001:db8:1::1", dst="2001:db8:2::10",
                                    dport=80, action="deny", would_deny=True,
                                    reason="host-not-allowed", tls=False, host=b"x.test",
                                    method="GET", path=b'/a"b\\c\x01\xe9', status=200,
                                    end="fin")))
    assert line["type"] == "request" and line["decision"] == "would_deny"
    assert line["source"] == "[2001:db8:1::1]:40000"
    assert line["destination"] == "[2001:db8:2::10]:80"
    assert (line["host"], line["method"], line["path"], line["status"]) == (
        "x.test", "GET", '/a"b\\c\x01\xe9', 200)
    pt = json.loads(c_line(fields(action="passthrough", reason="no-policy", host=b"",
                                  tls=False)))
    assert pt["by"] == "passthrough" and "reason" not in pt and "sni" not in pt


def test_durations_and_addresses_as_python_writes_them() -> None:
    for us in (0, 1, 10, 999, 1000, 1500, 12_345, 100_000, 86_400_000_000):
        c_line(fields(dur_us=us))
    for ip in ("::", "::1", "2001:db8::", "2001:0:0:1::1", "1:0:1:0:1:0:1:0", "fe80::1:0:0:1",
               "2001:db8:0:0:1:0:0:1", "::ffff:192.0.2.1", "0:0:1::", "1::2:0:0:3"):
        c_line(fields(src=ip, dst=ip))


printable = st.binary(min_size=0, max_size=127).map(lambda b: b.replace(b"\0", b"x"))


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(["conn", "http"]), start_ns=st.integers(0, 4_102_444_800 * 10**9),
       dur_us=st.integers(0, 10**12), v6=st.booleans(), a=st.binary(min_size=16, max_size=16),
       b=st.binary(min_size=16, max_size=16), sport=st.integers(0, 65535),
       dport=st.integers(0, 65535), action=st.sampled_from(sorted(_core.ACTIONS)),
       by=st.one_of(st.none(), st.text(max_size=80)),
       reason=st.sampled_from(sorted(_core.REASONS.values())), would_deny=st.booleans(),
       end=st.sampled_from(_core.ENDS), host=printable, tls=st.booleans(),
       method=st.sampled_from(_core.METHODS), path=printable, status=st.integers(0, 999),
       c2u=st.integers(0, 2**64 - 1), u2c=st.integers(0, 2**64 - 1))
def test_any_record_matches_the_reference(kind: str, start_ns: int, dur_us: int, v6: bool,
                                          a: bytes, b: bytes, **kw: Any) -> None:
    src, dst = (a, b) if v6 else (a[:4], b[:4])
    if kw["action"].startswith("need"):
        kw["action"] = "deny"  # records carry decisions, never a peek
    c_line(fields(kind=kind, start_ns=start_ns, dur_us=dur_us, src=src, dst=dst, **kw))


def test_the_longest_line() -> None:
    """Every field at its longest and every kept byte escaped (six characters each): the line
    is still written whole."""
    worst = bytes([1]) * 127
    text = c_line(fields(kind="http", src="ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                         dst="ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", sport=65535, dport=65535,
                         would_deny=True, reason="tunnel-not-allowed", host=worst, path=worst,
                         method="OPTIONS", status=65535, c2u=2**64 - 1, u2c=2**64 - 1,
                         dur_us=2**40, end="connect_refused", by="Egress " + "n" * 253))
    assert len(text) > 2048 and json.loads(text)["path"] == "\x01" * 127
