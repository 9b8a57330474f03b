"""From samples to the published results: per-figure medians with their spread, ratios to
`direct` and to HAProxy, the project's goals checked, a Markdown table and a PNG chart.

Spread is half the range (max - min) / 2 of the repetitions: with three to five repetitions it is
the honest statement of how far apart they were (a standard deviation of three numbers is not).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from bench.measure import SYSCALLS
from bench.proxies import (ACCESS_LOG_BASE, BARE, DIRECT, HAPROXY, MAIN, POLICY, POLICY_BASE,
                           PYRELAY)

#: Figures of the per-connection cost table (not columns of the main table).
CONNCOST = "conncost"


@dataclass(frozen=True)
class Figure:
    key: str
    title: str        # column title
    unit: str
    higher_better: bool
    group: str = MAIN
    proxy_only: bool = False   # meaningless for `direct` (no proxy process)
    digits: int = 0

    def fmt(self, v: float) -> str:
        if self.digits:
            return f"{v:.{self.digits}f}"
        return f"{v:,.0f}"


FIGURES: Tuple[Figure, ...] = (
    Figure("tput1_gbps", "1 stream", "Gbit/s", True, digits=2),
    Figure("tput8_gbps", "8 streams", "Gbit/s", True, digits=2),
    Figure("cpu_s_per_gb", "CPU", "s/GB", False, proxy_only=True, digits=3),
    Figure("conn_per_s", "new conn", "conn/s", True),
    Figure("ka_rps", "keep-alive", "req/s", True),
    Figure("lat_p50_us", "p50", "µs", False),
    Figure("lat_p99_us", "p99", "µs", False),
    Figure("mem_idle_mb", "idle", "MB", False, proxy_only=True, digits=1),
    Figure("mem_hold_mb", "idle conns", "MB", False, proxy_only=True, digits=1),
    Figure("pipes_hold", "pipes", "at idle conns", False, proxy_only=True),
    Figure("pipes_lent_hold", "pipes lent", "at idle conns", False, proxy_only=True,
           group="extra"),
    Figure("mem_active_mb", "active conns", "MB", False, proxy_only=True, digits=1),
    Figure("cpu_us_per_conn", "CPU per conn", "µs", False, CONNCOST, proxy_only=True,
           digits=1),
    Figure("sys_per_conn", "syscalls per conn", "", False, CONNCOST, proxy_only=True, digits=1),
    Figure("cpu_us_per_req", "CPU per keep-alive request", "µs", False, CONNCOST,
           proxy_only=True, digits=1),
    Figure("tls_tput_gbps", "443 1 stream", "Gbit/s", True, POLICY, digits=2),
    Figure("tls_conn_per_s", "443 new conn", "conn/s", True, POLICY),
    Figure("http_tput_gbps", "80 1 stream", "Gbit/s", True, POLICY, digits=2),
    Figure("http_conn_per_s", "80 new conn", "conn/s", True, POLICY),
)
BY_KEY = {f.key: f for f in FIGURES}


@dataclass
class Stat:
    median: float
    lo: float
    hi: float
    n: int

    @property
    def spread(self) -> float:
        return (self.hi - self.lo) / 2


def summarize(samples: List[dict]) -> Dict[str, Dict[str, Stat]]:
    """{case: {figure: Stat}} over the repetitions."""
    vals: Dict[str, Dict[str, List[float]]] = {}
    for s in samples:
        if s.get("value") is None:
            continue
        vals.setdefault(s["case"], {}).setdefault(s["figure"], []).append(float(s["value"]))
    return {c: {f: Stat(statistics.median(v), min(v), max(v), len(v)) for f, v in figs.items()}
            for c, figs in vals.items()}


def ratio(summary: Dict[str, Dict[str, Stat]], case: str, ref: str, key: str) -> Optional[float]:
    a = summary.get(case, {}).get(key)
    b = summary.get(ref, {}).get(key)
    if not a or not b or b.median == 0:
        return None
    return a.median / b.median


def cell(fig: Figure, st: Optional[Stat]) -> str:
    if st is None:
        return "—"
    if st.n > 1:
        return f"{fig.fmt(st.median)} ±{fig.fmt(st.spread)}"
    return fig.fmt(st.median)


def _r(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.2f}"


def goals(summary: Dict[str, Dict[str, Stat]], fastproxy_case: str) -> List[Tuple[str, str, bool]]:
    """The project's goals, each as (goal, measured, met), for one fastproxy case."""
    out: List[Tuple[str, str, bool]] = []
    fp = summary.get(fastproxy_case, {})
    hp = summary.get(HAPROXY, {})
    py = summary.get(PYRELAY, {})
    direct = summary.get(DIRECT, {})

    def both(key: str) -> Optional[Tuple[float, float]]:
        if key in fp and key in hp:
            return fp[key].median, hp[key].median
        return None

    t = both("tput1_gbps")
    t8 = both("tput8_gbps")
    if t and t8:
        r1, r8 = t[0] / t[1], t8[0] / t8[1]
        out.append(("throughput >= 1.1 x HAProxy", f"1 stream {r1:.2f}x, 8 streams {r8:.2f}x",
                    r1 >= 1.1 and r8 >= 1.1))
    c = both("cpu_s_per_gb")
    if c:
        out.append(("CPU per GB <= HAProxy", f"{c[0]:.3f} vs {c[1]:.3f} s/GB", c[0] <= c[1]))
    for key, name in (("conn_per_s", "new connections/s"), ("ka_rps", "keep-alive requests/s")):
        v = both(key)
        if v:
            out.append((f"{name} >= HAProxy", f"{v[0]:,.0f} vs {v[1]:,.0f}", v[0] >= v[1]))
    p = both("lat_p99_us")
    if p and "lat_p99_us" in direct:
        d = direct["lat_p99_us"].median
        out.append(("p99 added latency <= HAProxy",
                    f"{p[0] - d:+.0f} vs {p[1] - d:+.0f} µs", p[0] - d <= p[1] - d))
    if "conn_per_s" in fp and "conn_per_s" in py:
        r = fp["conn_per_s"].median / py["conn_per_s"].median
        out.append(("new connections/s >= 4 x Python relay", f"{r:.1f}x", r >= 4))
    if "mem_idle_mb" in fp:
        m = fp["mem_idle_mb"].median
        out.append(("idle memory < 30 MB", f"PSS {m:.1f} MB", m < 30))
    if "pipes_lent_hold" in fp:
        n = fp["pipes_lent_hold"].median
        pooled = fp["pipes_hold"].median if "pipes_hold" in fp else 0
        out.append(("no pipes held by idle connections",
                    f"{n:.0f} lent ({pooled:.0f} open in the pool)", n == 0))
    return out


def markdown(result: dict) -> str:
    """The Markdown report: machine, main table, ratio table, policy table, goals, micro."""
    summary = {c: {f: Stat(**s) for f, s in figs.items()} for c, figs in
               result["summary"].items()}
    meta = result["meta"]
    cases = result["cases"]
    env = meta["machine"]
    lines: List[str] = []
    lines.append(f"Measured {meta['started']} on {machine_line(env)}; "
                 f"{meta['plan']['repeat']} repetition(s), cases interleaved; "
                 f"run took {meta['duration_s']:.0f} s"
                 + (" (--quick)" if meta.get("quick") else "") + ".")
    lines.append("")
    lines.append(f"Every proxy runs as UID 1500 on port 15001 of the app namespace and is reached "
                 f"through `{meta.get('rules_tool') or '?'}` REDIRECT rules, as in a pod; "
                 "`direct` has the same rules with the server range excluded. The servers live "
                 "in a second namespace behind a veth.")
    lines.append("")
    hold_n = meta.get("hold_conns", 0)
    active_n = meta["plan"]["active_conns"]
    measured = {f for figs in summary.values() for f in figs}
    main_figs = [f for f in FIGURES if f.group == MAIN and f.key in measured]

    def title(f: Figure) -> str:
        t = f.title
        if f.key == "mem_hold_mb":
            t = f"{hold_n:,} idle"
        elif f.key == "mem_active_mb":
            t = f"{active_n:,} active"
        elif f.key == "pipes_hold":
            return f"pipes at {hold_n:,} idle"
        return f"{t} ({f.unit})"

    lines.append("Medians ± half the range over the repetitions. Throughput: iperf3; CPU: proxy "
                 "CPU seconds per GB moved; new conn: wrk `Connection: close`; latency: fixed "
                 f"{meta['plan']['lat_rate']:,.0f} req/s on {meta['plan']['lat_conns']} "
                 "keep-alive connections; memory: PSS summed over the proxy's processes (RSS is in the JSON).")
    lines.append("")
    lines.append("| case | " + " | ".join(title(f) for f in main_figs) + " |")
    lines.append("|---" * (len(main_figs) + 1) + "|")
    for c in cases:
        if c["group"] != MAIN:
            continue
        if c.get("skip"):
            lines.append(f"| {c['name']} | skipped: {c['skip']} |" + " |" * (len(main_figs) - 1))
            continue
        row = [cell(f, summary.get(c["name"], {}).get(f.key)) for f in main_figs]
        lines.append(f"| {c['name']} | " + " | ".join(row) + " |")
    lines.append("")
    ratio_figs = [f for f in main_figs if f.key not in ("pipes_hold",)]
    lines.append(f"Ratios of medians: to `direct` / to `{HAPROXY}` (throughput and rates: "
                 "higher is better; CPU, latency, memory: lower is better).")
    lines.append("")
    lines.append("| case | " + " | ".join(f"{f.title}" for f in ratio_figs) + " |")
    lines.append("|---" * (len(ratio_figs) + 1) + "|")
    for c in cases:
        if c["group"] != MAIN or c.get("skip"):
            continue
        row = []
        for f in ratio_figs:
            d = None if f.proxy_only else ratio(summary, c["name"], DIRECT, f.key)
            h = ratio(summary, c["name"], HAPROXY, f.key)
            row.append(f"{_r(d)} / {_r(h)}")
        lines.append(f"| {c['name']} | " + " | ".join(row) + " |")
    lines.append("")
    lines += bare_table(summary, cases)
    lines += like_for_like(summary, cases)
    lines += workers_table(summary, cases)
    lines += conncost_table(result, summary)
    pol = [c for c in cases if c["group"] == POLICY]
    if pol:
        pol_figs = [f for f in FIGURES if f.group == POLICY and f.key in measured]
        lines.append("Policy path (fastproxy, one worker per core): the same traffic decided by "
                     "an `https` SNI policy (port 443, a real ClientHello first) or an `http` "
                     "Host policy (port 80), against passthrough; the `-10k` cases' policy "
                     "lists 10,000 host names; ratio to passthrough in brackets. Throughput: "
                     "POSTs of 16 MiB over one connection; new conn: a ClientHello (443) and "
                     "one `Connection: close` request per connection.")
        lines.append("")
        lines.append("| case | " + " | ".join(f"{f.title} ({f.unit})" for f in pol_figs) + " |")
        lines.append("|---" * (len(pol_figs) + 1) + "|")
        for c in pol:
            if c.get("skip"):
                lines.append(f"| {c['name']} | skipped: {c['skip']} |" + " |" * (len(pol_figs) - 1))
                continue
            row = []
            for f in pol_figs:
                st = summary.get(c["name"], {}).get(f.key)
                r = ratio(summary, c["name"], POLICY_BASE, f.key)
                row.append(cell(f, st) + (f" ({r:.2f})" if st and r is not None
                                          and c["name"] != POLICY_BASE else ""))
            lines.append(f"| {c['name']} | " + " | ".join(row) + " |")
        lines.append("")
    alog = [c for c in cases if c["name"].startswith("accesslog-") and not c.get("skip")
            and c["name"] in summary]
    if alog:
        keys = [f for f in FIGURES if f.key in ("conn_per_s", "tput1_gbps", "cpu_s_per_gb")
                and f.key in measured]
        lines.append("Access log (fastproxy, splice, one worker per core, passthrough): off, "
                     "denials only (passthrough lines off), every connection logged; ratio to "
                     f"`{ACCESS_LOG_BASE}` in brackets. Goal: every connection logged costs at "
                     "most 5% of the new connections per second.")
        lines.append("")
        lines.append("| case | " + " | ".join(f"{f.title} ({f.unit})" for f in keys) + " |")
        lines.append("|---" * (len(keys) + 1) + "|")
        for c in alog:
            row = []
            for f in keys:
                st = summary.get(c["name"], {}).get(f.key)
                r = ratio(summary, c["name"], ACCESS_LOG_BASE, f.key)
                row.append(cell(f, st) + (f" ({r:.2f})" if st and r is not None
                                          and c["name"] != ACCESS_LOG_BASE else ""))
            lines.append(f"| {c['name']} | " + " | ".join(row) + " |")
        lines.append("")
    fp_cases = [c["name"] for c in cases if c["kind"] == "fastproxy" and c["group"] == MAIN
                and not c.get("skip") and c["name"] in summary
                and not c["name"].startswith("accesslog-")]
    if fp_cases:
        lines.append(f"The project's goals (against `{HAPROXY}`, `direct`, `pyrelay`):")
        lines.append("")
        lines.append("| goal | " + " | ".join(fp_cases) + " |")
        lines.append("|---" * (len(fp_cases) + 1) + "|")
        per_case = {c: {g: (m, ok) for g, m, ok in goals(summary, c)} for c in fp_cases}
        names: List[str] = []
        for c in fp_cases:
            for g in per_case[c]:
                if g not in names:
                    names.append(g)
        for g in names:
            row = []
            for c in fp_cases:
                if g in per_case[c]:
                    m, ok = per_case[c][g]
                    row.append(f"{'yes' if ok else '**no**'}: {m}")
                else:
                    row.append("—")
            lines.append(f"| {g} | " + " | ".join(row) + " |")
        lines.append("")
    micro = result.get("micro") or {}
    if micro.get("benchmarks"):
        lines.append("Micro-benchmarks (pytest-benchmark, `bench/micro`; median and "
                     "interquartile range of a call; extra: what the benchmark reports itself):")
        lines.append("")
        lines.append("| benchmark | median | IQR | rounds | extra |")
        lines.append("|---|---|---|---|---|")
        for b in micro["benchmarks"]:
            file = b.get("fullname", "").split("::")[0].rsplit("/", 1)[-1]
            extra = ", ".join(f"{k} {_num(v)}" for k, v in (b.get("extra_info") or {}).items())
            lines.append(f"| {file}::{b['name']} | {_time(b['median'])} | {_time(b['iqr'])} | "
                         f"{b['rounds']} | {extra} |")
        if micro.get("failures"):
            lines.append("")
            lines.append(f"(pytest exit {micro.get('pytest_exit')}: some micro-benchmarks failed; "
                         "see the JSON)")
        lines.append("")
    elif micro.get("skipped"):
        lines.append(f"Micro-benchmarks: skipped: {micro['skipped']}")
        lines.append("")
    notes = meta.get("notes") or []
    if notes:
        lines.append("Notes:")
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
        lines.append("")
    return "\n".join(lines)


def _measured(summary: Dict[str, Dict[str, Stat]], cases: List[dict], prefix: str = "",
              kind: str = "") -> List[str]:
    """Names of measured main cases (optionally by name prefix or kind), in case order."""
    return [c["name"] for c in cases if c["group"] == MAIN and not c.get("skip")
            and c["name"] in summary and c["name"].startswith(prefix)
            and (not kind or c["kind"] == kind) and not c["name"].startswith("accesslog-")]


def bare_table(summary: Dict[str, Dict[str, Stat]], cases: List[dict]) -> List[str]:
    """Each splice relay's distance to the bare relay (the floor of a user-space splice
    relay): ratio of medians per figure."""
    if BARE not in summary:
        return []
    keys = [k for k in ("tput1_gbps", "tput8_gbps", "cpu_s_per_gb", "conn_per_s",
                        "cpu_us_per_conn", "ka_rps", "lat_p99_us")
            if k in summary[BARE]]
    rows = [n for n in _measured(summary, cases) if n != BARE and n != DIRECT
            and ("splice" in n)]
    if not keys or not rows:
        return []
    out = [f"Distance to the bare splice relay (`{BARE}`: one thread, epoll, SO_ORIGINAL_DST, "
           "splice through 1 MiB pipes, nothing else; the floor of every user-space splice "
           "relay): ratio of medians to it (throughput and rates: higher is better, at most "
           "about 1; CPU and latency: lower is better, at least about 1).", "",
           "| case | " + " | ".join(f"{BY_KEY[k].title} ({BY_KEY[k].unit})" for k in keys) + " |",
           "|---" * (len(keys) + 1) + "|",
           f"| {BARE} | " + " | ".join(cell(BY_KEY[k], summary[BARE][k]) for k in keys) + " |"]
    for n in rows:
        out.append(f"| {n} | " + " | ".join(_r(ratio(summary, n, BARE, k)) for k in keys) + " |")
    return out + [""]


def like_for_like(summary: Dict[str, Dict[str, Stat]], cases: List[dict]) -> List[str]:
    """fastproxy N workers against HAProxy N threads (and copy against copy)."""
    pairs = []
    for n in _measured(summary, cases, "fastproxy-splice-"):
        ref = "haproxy-splice-" + n.rsplit("-", 1)[1].replace("w", "t")
        if ref in summary:
            pairs.append((n, ref))
    if "fastproxy-copy-1w" in summary and "haproxy-copy" in summary:
        pairs.append(("fastproxy-copy-1w", "haproxy-copy"))
    keys = [f for f in FIGURES if f.group in (MAIN, CONNCOST) and f.key != "pipes_hold"
            and f.key != "pipes_lent_hold" and any(f.key in summary[a] and f.key in summary[b]
                                                   for a, b in pairs)]
    if not pairs or not keys:
        return []
    out = ["Like against like: fastproxy with N workers against HAProxy with N threads (ratio "
           "of medians; above 1 is better for throughput and rates, below 1 for CPU, latency "
           "and memory).", "",
           "| fastproxy ÷ HAProxy | " + " | ".join(f.title for f in keys) + " |",
           "|---" * (len(keys) + 1) + "|"]
    for a, b in pairs:
        out.append(f"| {a} ÷ {b} | " + " | ".join(_r(ratio(summary, a, b, f.key))
                                                    for f in keys) + " |")
    return out + [""]


def worse_beyond_noise(f: Figure, many: Stat, one: Stat) -> bool:
    """N workers worse than one by more than the two noise bands (± half range) together."""
    diff = (one.median - many.median) if f.higher_better else (many.median - one.median)
    return diff > many.spread + one.spread


def workers_table(summary: Dict[str, Dict[str, Stat]], cases: List[dict]) -> List[str]:
    """"Two workers never lose to one": fastproxy-splice-Nw ÷ fastproxy-splice-1w per figure,
    ✗ where N workers are worse beyond the noise."""
    one = "fastproxy-splice-1w"
    many = [n for n in _measured(summary, cases, "fastproxy-splice-") if n != one]
    if one not in summary or not many:
        return []
    keys = [f for f in FIGURES if f.group in (MAIN, CONNCOST) and f.key in summary[one]
            and any(f.key in summary[m] for m in many)]
    out = [f"N workers never lose to one: `fastproxy-splice-Nw` ÷ `{one}` per figure; ✗: N "
           "workers worse than one by more than both noise bands (± half the range) together "
           "(with one repetition there is no noise band: any loss is marked).", "",
           "| case | " + " | ".join(f.title for f in keys) + " |",
           "|---" * (len(keys) + 1) + "|"]
    for m in many:
        row = []
        for f in keys:
            a, b = summary[m].get(f.key), summary[one].get(f.key)
            if not a or not b or not b.median:
                row.append("—")
                continue
            row.append(f"{a.median / b.median:.2f}" + (" ✗" if worse_beyond_noise(f, a, b)
                                                        else ""))
        out.append(f"| {m} ÷ {one} | " + " | ".join(row) + " |")
    return out + [""]


def conncost_table(result: dict, summary: Dict[str, Dict[str, Stat]]) -> List[str]:
    """Syscalls per proxied new connection, by syscall (medians over the repetitions of the
    traced step), and the proxy's CPU µs per connection (the untraced new-connection run)."""
    per: Dict[str, Dict[str, List[float]]] = {}
    tracer: Dict[str, float] = {}
    for s in result.get("samples", []):
        if s.get("figure") == "sys_per_conn" and s.get("value") is not None:
            ex = s.get("extra", {})
            d = per.setdefault(s["case"], {})
            for k in SYSCALLS + ("others", "total"):
                if k in ex:
                    d.setdefault(k, []).append(float(ex[k]))
            tracer[s["case"]] = max(tracer.get(s["case"], 0.0), float(ex.get("tracer", 1.0)))
    names = [c["name"] for c in result["cases"] if c["name"] in per]
    if not names:
        return []
    cols = [k for k in SYSCALLS if any(per[n].get(k) and statistics.median(per[n][k]) >= 0.005
                                       for n in names)] + ["others"]
    how = ("`perf stat` on the syscall tracepoints" if all(tracer[n] == 1.0 for n in names)
           else "`perf stat` on the syscall tracepoints, or `strace -c -f` where marked "
                "(strace slows the proxy, not the counts)")
    out = ["Per-connection cost: syscalls per proxied new connection (one `Connection: close` "
           "request each; wrk, 32 connections, 1 s), counted with " + how + " on every thread "
           "of the proxy in a separate traced run after the case's timed figures, divided by "
           "the requests wrk completed; CPU: the proxy's user + system time over the untraced "
           "new-connection run, per connection, and over the keep-alive run, per request. "
           "`direct` has no proxy. Columns that stay below 0.005 for every case are left out "
           "(counted in others).", "",
           "| case | CPU (µs/conn) | CPU (µs/keep-alive request) | syscalls/conn | "
           + " | ".join(cols) + " |",
           "|---" * (len(cols) + 4) + "|"]
    for n in names:
        cpu = summary.get(n, {}).get("cpu_us_per_conn")
        per_req = cell(BY_KEY["cpu_us_per_req"], summary.get(n, {}).get("cpu_us_per_req"))
        vals = [f"{statistics.median(per[n][k]):.2f}" if per[n].get(k) else "—" for k in cols]
        total = f"{statistics.median(per[n]['total']):.1f}" if per[n].get("total") else "—"
        mark = " (strace)" if tracer[n] == 2.0 else ""
        out.append(f"| {n}{mark} | {cell(BY_KEY['cpu_us_per_conn'], cpu)} | {per_req} | {total} | "
                   + " | ".join(vals) + " |")
    return out + [""]


def _num(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _time(s: float) -> str:
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.2f} µs"
    return f"{s * 1e9:.0f} ns"


def machine_line(env: dict) -> str:
    parts = [f"{env.get('cores', '?')} cores ({env.get('cpu', 'unknown CPU')})",
             f"{env.get('mem_gb', '?')} GB", f"Linux {env.get('kernel', '?')}"]
    if env.get("os"):
        parts.append(env["os"])
    if env.get("tools", {}).get("haproxy"):
        parts.append(env["tools"]["haproxy"].split(" - ")[0])
    return ", ".join(parts)


#: Figures shown in the chart, in this order.
CHART_FIGS = ("tput1_gbps", "tput8_gbps", "conn_per_s", "ka_rps", "lat_p99_us", "cpu_s_per_gb",
              "mem_idle_mb", "mem_active_mb")


def chart(result: dict, path: Path) -> Optional[str]:
    """A PNG with two panels of grouped bars: each case's ratio to `direct` and to
    `haproxy-splice`, per figure. Returns an error string if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError as e:
        return f"no chart: {e}"
    summary = {c: {f: Stat(**s) for f, s in figs.items()} for c, figs in
               result["summary"].items()}
    cases = [c["name"] for c in result["cases"] if c["group"] == MAIN and not c.get("skip")
             and c["name"] in summary]
    fig, axes = plt.subplots(2, 1, figsize=(13, 8.5), constrained_layout=True)
    for ax, ref in zip(axes, (DIRECT, HAPROXY)):
        measured = {f for figs in summary.values() for f in figs}
        figs = [BY_KEY[k] for k in CHART_FIGS if k in measured
                and not (ref == DIRECT and BY_KEY[k].proxy_only)]
        shown = [c for c in cases if c != ref]
        width = 0.8 / max(1, len(shown))
        cmap = plt.get_cmap("tab10")
        for i, c in enumerate(shown):
            xs, ys, lo, hi = [], [], [], []
            for j, f in enumerate(figs):
                r = ratio(summary, c, ref, f.key)
                if r is None:
                    continue
                st, base = summary[c][f.key], summary[ref][f.key].median
                xs.append(j + (i - (len(shown) - 1) / 2) * width)
                ys.append(r)
                lo.append(max(0.0, r - st.lo / base))
                hi.append(max(0.0, st.hi / base - r))
            ax.bar(xs, ys, width=width, label=c, color=cmap(cases.index(c) % 10),
                   yerr=[lo, hi] if any(lo) or any(hi) else None, capsize=1.5,
                   error_kw={"linewidth": 0.6})
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.set_xticks(range(len(figs)))
        ax.set_xticklabels([f"{f.title}\n({f.unit}, {'higher' if f.higher_better else 'lower'}"
                            " is better)" for f in figs], fontsize=8)
        ax.set_ylabel(f"ratio to {ref}")
        reps = result["meta"]["plan"]["repeat"]
        ax.set_title(f"ratio to {ref}" + (f" (medians of {reps} runs; bars: their range)"
                                          if reps > 1 else " (one run)"))
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=4)
    fig.suptitle(f"fastproxy benchmark - {machine_line(result['meta']['machine'])}", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
