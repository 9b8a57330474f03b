"""The report's arithmetic and rendering on made-up samples: `pytest bench/tests`."""
from __future__ import annotations

from bench import report as R


def sample(case: str, figure: str, value, rep: int = 0) -> dict:
    return {"rep": rep, "case": case, "figure": figure, "value": value, "extra": {}}


def test_summary_is_median_with_half_range():
    s = R.summarize([sample("a", "tput1_gbps", v, i) for i, v in enumerate((9.0, 10.0, 13.0))]
                    + [sample("a", "fastproxy_stats", None)])
    st = s["a"]["tput1_gbps"]
    assert (st.median, st.lo, st.hi, st.n) == (10.0, 9.0, 13.0, 3)
    assert st.spread == 2.0
    assert "fastproxy_stats" not in s["a"]


def test_goals_against_haproxy_direct_and_pyrelay():
    def stat(v: float) -> R.Stat:
        return R.Stat(v, v, v, 1)

    summary = {
        "direct": {"lat_p99_us": stat(100)},
        "haproxy-splice-1t": {"tput1_gbps": stat(9), "tput8_gbps": stat(10),
                           "cpu_s_per_gb": stat(0.3), "conn_per_s": stat(16000),
                           "ka_rps": stat(59000), "lat_p99_us": stat(300)},
        "pyrelay": {"conn_per_s": stat(4000)},
        "fp": {"tput1_gbps": stat(9.5), "tput8_gbps": stat(12), "cpu_s_per_gb": stat(0.25),
               "conn_per_s": stat(17000), "ka_rps": stat(50000), "lat_p99_us": stat(250),
               "mem_idle_mb": stat(14), "pipes_lent_hold": stat(0), "pipes_hold": stat(2)},
    }
    got = {g: ok for g, _, ok in R.goals(summary, "fp")}
    assert got["throughput >= 1.1 x HAProxy"] is False  # 8 streams 1.2x, 1 stream only 1.06x
    assert got["CPU per GB <= HAProxy"] is True
    assert got["new connections/s >= HAProxy"] is True
    assert got["keep-alive requests/s >= HAProxy"] is False
    assert got["p99 added latency <= HAProxy"] is True
    assert got["new connections/s >= 4 x Python relay"] is True
    assert got["idle memory < 30 MB"] is True
    assert got["no pipes held by idle connections"] is True


def test_markdown_shows_skips_and_only_measured_columns(tmp_path):
    samples = [sample(c, "tput1_gbps", v, r) for r in range(2)
               for c, v in (("direct", 16.0 + r), ("haproxy-splice-1t", 9.0 + r))]
    result = {
        "meta": {"started": "now", "duration_s": 12.0, "plan": {"repeat": 2, "lat_rate": 2000,
                 "lat_conns": 8, "active_conns": 1000}, "machine": {"cores": 2},
                 "hold_conns": 9000, "rules_tool": "fastproxy iptables", "notes": ["n1"]},
        "cases": [{"name": "direct", "kind": "direct", "group": "main", "skip": ""},
                  {"name": "haproxy-splice-1t", "kind": "haproxy", "group": "main", "skip": ""},
                  {"name": "socat", "kind": "socat", "group": "main", "skip": "not installed"}],
        "summary": {c: {f: vars(st) for f, st in figs.items()}
                    for c, figs in R.summarize(samples).items()},
        "micro": {"skipped": "none yet"},
    }
    md = R.markdown(result)
    assert "| socat | skipped: not installed |" in md
    assert "16.50 ±0.50" in md and "9.50 ±0.50" in md
    assert "8 streams" not in md                  # never measured: no column
    assert "0.58 / 1.00" in md                    # haproxy against direct / itself
    assert "- n1" in md and "none yet" in md
    err = R.chart(result, tmp_path / "c.png")
    assert err is not None or (tmp_path / "c.png").stat().st_size > 1000


def _result(samples, cases, repeat=1):
    return {
        "meta": {"started": "now", "duration_s": 1.0, "plan": {"repeat": repeat, "lat_rate": 2000,
                 "lat_conns": 8, "active_conns": 1000}, "machine": {"cores": 2},
                 "hold_conns": 9000, "rules_tool": "fastproxy iptables", "notes": []},
        "cases": [{"name": c, "kind": c.split("-")[0], "group": "main", "skip": ""}
                  for c in cases],
        "samples": samples,
        "summary": {c: {f: vars(st) for f, st in figs.items()}
                    for c, figs in R.summarize(samples).items()},
        "micro": {},
    }


def test_bare_relay_and_like_for_like_ratios():
    vals = {"bare-relay": (20.0, 0.2), "fastproxy-splice-1w": (15.0, 0.25),
            "fastproxy-splice-2w": (16.0, 0.3), "haproxy-splice-1t": (12.0, 0.3),
            "haproxy-splice-2t": (10.0, 0.2)}
    samples = [sample(c, k, v) for c, (t, cpu) in vals.items()
               for k, v in (("tput1_gbps", t), ("cpu_s_per_gb", cpu))]
    md = R.markdown(_result(samples, list(vals)))
    lines = md.splitlines()
    bare = [l for l in lines if l.startswith("| fastproxy-splice-1w | 0.75 | 1.25 |")]
    assert bare, md                                       # 15/20, 0.25/0.2
    assert "| fastproxy-splice-2w ÷ haproxy-splice-2t | 1.60 | 1.50 |" in md
    assert "| fastproxy-splice-1w ÷ haproxy-splice-1t | 1.25 | 0.83 |" in md


def test_workers_table_marks_losses_beyond_noise():
    samples = []
    # 1 stream: 2w clearly worse (ranges far apart); new conn: 2w lower but within the noise
    for r, (t1, t2, c1, c2) in enumerate(((15.0, 12.0, 10000, 10000), (15.2, 12.2, 11000, 10200))):
        samples += [sample("fastproxy-splice-1w", "tput1_gbps", t1, r),
                    sample("fastproxy-splice-2w", "tput1_gbps", t2, r),
                    sample("fastproxy-splice-1w", "conn_per_s", c1, r),
                    sample("fastproxy-splice-2w", "conn_per_s", c2, r)]
    f1, f2 = R.BY_KEY["tput1_gbps"], R.BY_KEY["conn_per_s"]
    s = R.summarize(samples)
    assert R.worse_beyond_noise(f1, s["fastproxy-splice-2w"]["tput1_gbps"],
                                s["fastproxy-splice-1w"]["tput1_gbps"])
    assert not R.worse_beyond_noise(f2, s["fastproxy-splice-2w"]["conn_per_s"],
                                    s["fastproxy-splice-1w"]["conn_per_s"])
    # lower is better: 2w using less CPU is never a loss
    lo = R.Stat(0.2, 0.2, 0.2, 1)
    hi = R.Stat(0.3, 0.3, 0.3, 1)
    assert not R.worse_beyond_noise(R.BY_KEY["cpu_s_per_gb"], lo, hi)
    assert R.worse_beyond_noise(R.BY_KEY["cpu_s_per_gb"], hi, lo)
    md = R.markdown(_result(samples, ["fastproxy-splice-1w", "fastproxy-splice-2w"], 2))
    row = [l for l in md.splitlines() if l.startswith("| fastproxy-splice-2w ÷ fastproxy-splice-1w")]
    assert row == ["| fastproxy-splice-2w ÷ fastproxy-splice-1w | 0.80 ✗ | 0.96 |"], md


def test_conncost_table_from_traced_samples():
    def traced(case, rep, total, accept, splice):
        extra = {k: 0.0 for k in R.SYSCALLS}
        extra.update(accept4=accept, splice=splice, total=total, tracer=1.0,
                     others=total - accept - splice, requests=1000.0)
        return {"rep": rep, "case": case, "figure": "sys_per_conn", "value": total,
                "extra": extra}
    samples = [traced("bare-relay", 0, 20.0, 1.0, 4.0), traced("bare-relay", 1, 22.0, 1.0, 6.0),
               traced("bare-relay", 2, 30.0, 1.0, 5.0),
               sample("bare-relay", "cpu_us_per_conn", 30.0),
               sample("direct", "conn_per_s", 1.0)]
    md = R.markdown(_result(samples, ["direct", "bare-relay"], 3))
    assert "| case | CPU (µs/conn) | CPU (µs/keep-alive request) | syscalls/conn | accept4 | splice | others |" in md
    assert "| bare-relay | 30.0 | — | 22.0 | 1.00 | 5.00 | 15.00 |" in md   # medians per column
    assert "| direct |" not in md.split("Per-connection cost")[1].split("\n\n")[1]
