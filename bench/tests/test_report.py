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
        "haproxy-splice": {"tput1_gbps": stat(9), "tput8_gbps": stat(10),
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
               for c, v in (("direct", 16.0 + r), ("haproxy-splice", 9.0 + r))]
    result = {
        "meta": {"started": "now", "duration_s": 12.0, "plan": {"repeat": 2, "lat_rate": 2000,
                 "lat_conns": 8, "active_conns": 1000}, "machine": {"cores": 2},
                 "hold_conns": 9000, "rules_tool": "fastproxy iptables", "notes": ["n1"]},
        "cases": [{"name": "direct", "kind": "direct", "group": "main", "skip": ""},
                  {"name": "haproxy-splice", "kind": "haproxy", "group": "main", "skip": ""},
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
