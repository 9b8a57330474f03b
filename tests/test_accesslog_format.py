"""The access log's JSON lines from C records (fastproxy.accesslog.format_record): field names,
the object a rule id stands for in the table the connection was admitted under, IPv6 brackets."""
from __future__ import annotations

import json

from fastproxy.accesslog import KEEP_TABLES, RuleNames, format_record, policy_label

T0 = 1_764_469_482_285_307_000  # 2025-11-30T02:24:42.285307Z


def rec(**kw: object) -> tuple:
    base = dict(kind="conn", start_ns=T0, dur_us=1500, src="198.51.100.1", sport=40000,
                dst="192.0.2.10", dport=443, action="deny", rule=-1, reason="sni-not-allowed",
                would_deny=False, end="denied", host="deny.test", tls=True, method="OTHER",
                path="", status=0, c2u=0, u2c=0, table_id=1)
    base.update(kw)
    return tuple(base.values())


def test_deny_line() -> None:
    line = format_record(rec(), RuleNames())
    assert line == {"time": "2025-11-30T02:24:42.285307Z", "type": "connection",
                    "source": "198.51.100.1:40000", "destination": "192.0.2.10:443",
                    "decision": "deny", "reason": "sni-not-allowed", "sni": "deny.test",
                    "bytes_sent": 0, "bytes_received": 0, "duration_ms": 1.5, "end": "denied"}


def test_rule_names_follow_the_table_of_admission() -> None:
    names = RuleNames()
    names.add(1, ["Egress ns/a", "Service ns/svc"])
    names.add(2, ["Egress ns/b"])
    r1 = format_record(rec(action="allow", rule=0, reason="", table_id=1), names)
    r2 = format_record(rec(action="allow", rule=0, reason="", table_id=2), names)
    assert (r1["by"], r2["by"]) == ("Egress ns/a", "Egress ns/b")
    assert "reason" not in r1
    mesh = format_record(rec(action="mesh", rule=1, reason="", table_id=1), names)
    assert mesh["by"] == "Service ns/svc"
    for i in range(3, 3 + KEEP_TABLES):
        names.add(i, [])
    assert format_record(rec(action="allow", rule=0, table_id=1), names)["by"] == "rule 0"
    assert policy_label("Egress ns/a") == "ns/a"


def test_request_and_would_deny_and_ipv6() -> None:
    line = format_record(rec(kind="http", src="2001:db8:1::1", dst="2001:db8:2::10", dport=80,
                             action="deny", would_deny=True, reason="host-not-allowed",
                             tls=False, host="x.test", method="GET", path='/a"b', status=200,
                             end="fin"), RuleNames())
    assert line["type"] == "request" and line["decision"] == "would_deny"
    assert line["source"] == "[2001:db8:1::1]:40000"
    assert line["destination"] == "[2001:db8:2::10]:80"
    assert (line["host"], line["method"], line["path"], line["status"]) == ("x.test", "GET",
                                                                             '/a"b', 200)
    assert json.loads(json.dumps(line)) == line
    pt = format_record(rec(action="passthrough", reason="no-policy", host="", tls=False),
                       RuleNames())
    assert pt["by"] == "passthrough" and "reason" not in pt and "sni" not in pt
