"""`python -m bench` (or `bench/run`): the benchmark suite's one command.

    sudo bench/run [--quick] [--repeat N] [--cases PATTERN,...] [--publish]

Installs what is missing, builds a pod-like topology, then for each repetition runs every case
in turn (the order rotated each repetition, so machine noise hits all cases alike), each case
measuring all its figures on a freshly started proxy. Writes bench/results/results-<time>.json
(every sample), latest.md (the table), latest.png (the ratio chart); --publish also copies them
into bench/README.md and bench/chart.png.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

from bench import deps, lab as L, measure as M, report as R
from bench.proxies import MAIN, Case, Context, all_cases

RESULTS = L.BENCH / "results"
README = L.BENCH / "README.md"
PUBLISHED_CHART = L.BENCH / "chart.png"
MARK_START = "<!-- bench:latest:start -->"
MARK_END = "<!-- bench:latest:end -->"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short repetition (under a minute)")
    ap.add_argument("--repeat", type=int, help="repetitions (default 3; --quick: 1)")
    ap.add_argument("--cases", default="", help="comma-separated names or globs "
                    "(e.g. 'direct,haproxy-*,fastproxy-splice-*'); default: all")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--no-install", action="store_true",
                    help="do not install Debian/PyPI packages or rebuild fastproxy")
    ap.add_argument("--no-micro", action="store_true", help="skip the pytest-benchmark part")
    ap.add_argument("--micro", action="store_true",
                    help="run the pytest-benchmark part with --quick too (about 20 s more)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (bench/results)")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="only render latest.md/latest.png (and --publish) from a results file")
    ap.add_argument("--publish", action="store_true",
                    help="also write the table into bench/README.md and the chart to "
                         "bench/chart.png")
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def select(cases: List[Case], spec: str) -> List[Case]:
    if not spec:
        return cases
    pats = [p.strip() for p in spec.split(",") if p.strip()]
    chosen = [c for c in cases if any(fnmatch.fnmatch(c.name, p) for p in pats)]
    unknown = [p for p in pats if not any(fnmatch.fnmatch(c.name, p) for c in cases)]
    if unknown:
        raise SystemExit(f"bench: unknown case(s): {', '.join(unknown)}; see --list")
    return chosen


class Runner:
    def __init__(self, args: argparse.Namespace, plan: M.Plan, ctx: Context, fpload: str,
                 lab: L.Lab) -> None:
        self.args = args
        self.plan = plan
        self.ctx = ctx
        self.fpload = fpload
        self.lab = lab
        self.samples: List[dict] = []
        self.errors: List[dict] = []
        self.probed: Dict[str, bool] = {}
        self.prefix_good = lab.tmp / "clienthello-bench.bin"
        self.prefix_bad = lab.tmp / "clienthello-other.bin"
        self.prefix_good.write_bytes(M.client_hello(L.POLICY_HOST))
        self.prefix_bad.write_bytes(M.client_hello("other.test"))
        os.chmod(self.prefix_good, 0o644)
        os.chmod(self.prefix_bad, 0o644)

    def add(self, rep: int, case: Case, figure: str, value: Optional[float], **extra) -> None:
        self.samples.append({"rep": rep, "case": case.name, "figure": figure, "value": value,
                             "extra": extra, "t": round(time.time(), 3)})

    def fail(self, rep: int, case: Case, what: str, err: BaseException) -> None:
        msg = f"{type(err).__name__}: {err}".strip()
        self.errors.append({"rep": rep, "case": case.name, "what": what, "error": msg[:2000]})
        log(f"  {case.name}: {what} failed: {msg.splitlines()[0][:300]}")

    # -- one case, one repetition ----------------------------------------------------------
    def run_case(self, rep: int, case: Case) -> None:
        t0 = time.monotonic()
        try:
            running = case.start(self.lab, self.ctx)
        except Exception as e:  # a proxy that does not start is a failed sample, not a crash
            self.fail(rep, case, "start", e)
            return
        try:
            if case.policy and not self.probe(case):
                return
            root = running.pid
            if root:
                time.sleep(self.plan.settle_secs)
                m = M.memory_kb(root)
                self.add(rep, case, "mem_idle_mb", m["pss_kb"] / 1024, **m)
            if case.group == MAIN:
                self.main_figures(rep, case, running, root)
            else:
                self.policy_figures(rep, case, running)
            if running.proc is not None and not running.alive():
                raise RuntimeError(f"the proxy exited with {running.proc.returncode}; log: "
                                   f"{running.log}")
            st = running.stats()
            if st:  # fastproxy's counters after the case (fallbacks, errors...): JSON only
                self.add(rep, case, "fastproxy_stats", None, **st)
        except Exception as e:
            self.fail(rep, case, "measure", e)
        finally:
            running.stop()
        got = {s["figure"]: s["value"] for s in self.samples
               if s["rep"] == rep and s["case"] == case.name and s["value"] is not None}
        shown = ", ".join(f"{R.BY_KEY[k].title} {R.BY_KEY[k].fmt(v)} {R.BY_KEY[k].unit}"
                          for k, v in got.items() if k in R.BY_KEY)
        log(f"  {case.name} ({time.monotonic() - t0:.1f} s): {shown}")

    def _guard(self, rep: int, case: Case, what: str, fn) -> None:
        try:
            fn()
        except Exception as e:
            self.fail(rep, case, what, e)

    def main_figures(self, rep: int, case: Case, running, root: Optional[int]) -> None:
        """All main figures on one started proxy. `root` is only used as "has a process": the
        pid itself is read from `running` each time (socat is restarted per destination)."""
        plan = self.plan

        def cpu() -> float:
            return M.cpu_seconds(running.pid) if running.pid else 0.0

        def throughput() -> None:
            running.retarget(L.IPERF_PORT)
            c0 = cpu()
            one = M.iperf(self.lab, 1, plan.iperf_secs)
            c1 = cpu()
            self.add(rep, case, "tput1_gbps", one["gbps"], **one, cpu_s=c1 - c0)
            eight = {"bytes": 0.0}
            if plan.full:
                eight = M.iperf(self.lab, 8, plan.iperf_secs)
                self.add(rep, case, "tput8_gbps", eight["gbps"], **eight, cpu_s=cpu() - c1)
            c2 = cpu()
            if root:
                gb = (one["bytes"] + eight["bytes"]) / 1e9
                if c2 - c0 < 0.02 and gb > 0.2:
                    raise RuntimeError(f"{gb:.1f} GB moved but the proxy used {c2 - c0:.2f} CPU "
                                       "seconds: the traffic did not go through it")
                self.add(rep, case, "cpu_s_per_gb", (c2 - c0) / gb, cpu_s=c2 - c0, gb=gb,
                         one_stream=(c1 - c0) / (one["bytes"] / 1e9),
                         eight_streams=(c2 - c1) / (eight["bytes"] / 1e9) if eight["bytes"]
                         else None)

        def rates() -> None:
            running.retarget(L.HTTP_PORT)
            url = f"http://{L.SERVER_IP}:{L.HTTP_PORT}/"
            c0 = cpu()
            w = M.wrk(self.lab, url, plan.wrk_secs, plan.wrk_conns, ["Connection: close"])
            c1 = cpu()
            self.add(rep, case, "conn_per_s", w["rps"], **w, cpu_s=c1 - c0)
            if root and w.get("requests"):
                self.add(rep, case, "cpu_us_per_conn", (c1 - c0) / w["requests"] * 1e6,
                         cpu_s=c1 - c0, requests=w["requests"])
            if not plan.full:
                return
            w = M.wrk(self.lab, url, plan.wrk_secs, plan.wrk_conns)
            c2 = cpu()
            self.add(rep, case, "ka_rps", w["rps"], **w, cpu_s=c2 - c1)
            if root and w.get("requests"):
                self.add(rep, case, "cpu_us_per_req", (c2 - c1) / w["requests"] * 1e6,
                         cpu_s=c2 - c1, requests=w["requests"])

        def latency() -> None:
            running.retarget(L.HTTP_PORT)
            d = M.fpload_rate(self.lab, self.fpload, plan.lat_rate, plan.lat_conns,
                              plan.lat_secs, plan.lat_warmup)
            bad = d["errors"] + d["lost"]
            if bad:
                raise RuntimeError(f"{bad} requests failed or were lost at {plan.lat_rate}/s")
            self.add(rep, case, "lat_p50_us", d["p50_us"], **d)
            self.add(rep, case, "lat_p99_us", d["p99_us"], **d)

        def busy() -> None:
            if not root:
                return
            running.retarget(L.HTTP_PORT)
            d = M.active(self.lab, self.fpload, plan.active_conns, plan.active_rate,
                         plan.active_secs, running.pid)
            if d["errors"]:
                raise RuntimeError(f"{d['errors']:.0f} requests failed on "
                                   f"{plan.active_conns} active connections")
            self.add(rep, case, "mem_active_mb", d["pss_kb"] / 1024, **d)

        def idle_conns() -> None:
            if not root:
                return
            if case.kind == "socat":
                # one process per connection: holding thousands would measure fork, not relaying
                return
            running.retarget(L.HOLD_PORT)
            n = self.hold_conns()

            def extra() -> Dict[str, float]:
                st = running.stats()
                if not st:
                    return {}
                return {f"fp_{k}": float(st[k]) for k in ("pipes_in_use", "pipes_pooled",
                                                          "cx_active", "accept_errors")
                        if isinstance(st.get(k), (int, float))}

            d = M.hold(self.lab, self.fpload, n, running.pid, timeout=60, on_hold=extra)
            if d["failed"]:
                raise RuntimeError(f"only {d['ready']:.0f} of {n} idle connections got through")
            self.add(rep, case, "mem_hold_mb", d["pss_kb"] / 1024, **d)
            self.add(rep, case, "pipes_hold", d["pipes"], **d)
            if "fp_pipes_in_use" in d:  # fastproxy tells lent pipes from its idle pool
                self.add(rep, case, "pipes_lent_hold", d["fp_pipes_in_use"], **d)

        def conncost() -> None:
            """Syscalls per new connection, traced: after every timed figure of the case."""
            if not root or not case.conncost:
                return
            running.retarget(L.HTTP_PORT)
            d = M.syscalls_per_conn(self.lab, running.pid, plan.wrk_secs, plan.wrk_conns)
            self.add(rep, case, "sys_per_conn", d["total"], **d)

        for what, fn in (("throughput", throughput), ("rates", rates), ("latency", latency),
                         ("active", busy), ("idle", idle_conns), ("syscalls", conncost)):
            if running.proc is not None and not running.alive():
                raise RuntimeError(f"the proxy exited with {running.proc.returncode} "
                                   f"before {what}; log: {running.log}")
            self._guard(rep, case, what, fn)

    def hold_conns(self) -> int:
        """Idle connections to hold: the plan's count, within what the fd limit allows (the
        proxy needs two descriptors per connection)."""
        return min(self.plan.hold_conns, (L.nofile_hard() - 2000) // 2)

    def probe(self, case: Case) -> bool:
        """Before a policy case is first measured: proves its policy is enforced (other.test
        refused, bench.test relayed); otherwise marks the case skipped. Returns True to go on."""
        if not self.probed.get(case.name):
            self.probed[case.name] = True
            https = case.policy == "https"
            why = M.probe_policy(self.lab, L.TLS_PORT if https else L.HTTP_PORT,
                                 self.prefix_good if https else None,
                                 self.prefix_bad if https else None)
            if why:
                case.skip = why
                log(f"  {case.name}: skipped: {why}")
        return not case.skip

    def policy_figures(self, rep: int, case: Case, running) -> None:
        """Throughput and connection rate of :443 (ClientHello first) and/or :80 traffic."""
        kinds = [("tls", L.TLS_PORT, self.prefix_good), ("http", L.HTTP_PORT, None)]
        for proto, port, prefix in kinds:
            if case.policy and case.policy != {"tls": "https", "http": "http"}[proto]:
                continue
            self._guard(rep, case, f"{proto} throughput",
                        lambda p=proto, po=port, pr=prefix: self._bulk(rep, case, p, po, pr))
            self._guard(rep, case, f"{proto} connection rate",
                        lambda p=proto, po=port, pr=prefix: self._connrate(rep, case, p, po, pr))

    def _bulk(self, rep: int, case: Case, proto: str, port: int, prefix: Optional[Path]) -> None:
        d = M.fpload_bulk(self.lab, self.fpload, port, self.plan.bulk_secs, prefix)
        self.add(rep, case, f"{proto}_tput_gbps", d["gbit_s"], **d)

    def _connrate(self, rep: int, case: Case, proto: str, port: int,
                  prefix: Optional[Path]) -> None:
        d = M.fpload_connrate(self.lab, self.fpload, port, self.plan.connrate_secs,
                              self.plan.wrk_conns, prefix)
        self.add(rep, case, f"{proto}_conn_per_s", d["rate"], **d)


def run_micro(out: Path, plan: M.Plan) -> dict:
    """pytest-benchmark over bench/micro (written by others); folded in, absent is fine."""
    micro_dir = L.BENCH / "micro"
    tests = sorted(micro_dir.glob("test_*.py")) if micro_dir.is_dir() else []
    if not tests:
        return {"skipped": "no micro-benchmarks in bench/micro yet"}
    jpath = out / "micro.json"
    cmd = [sys.executable, "-m", "pytest", str(micro_dir), "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={jpath}", f"--benchmark-max-time={plan.micro_max_time}",
           "--benchmark-min-rounds=5", "--benchmark-disable-gc"]
    log("micro-benchmarks: " + " ".join(t.name for t in tests))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(L.ROOT), timeout=600)
    if not jpath.exists():
        out = r.stdout.strip().splitlines()
        first_err = next((l for l in out if l.startswith("E ")), "")
        return {"skipped": f"pytest exit {r.returncode}: {(out or [''])[-1][:120]}"
                           + (f" ({first_err[1:].strip()[:160]})" if first_err else "")}
    data = json.loads(jpath.read_text())
    jpath.unlink()
    benches = [{"name": b["name"], "fullname": b["fullname"], "group": b.get("group"),
                "median": b["stats"]["median"], "iqr": b["stats"]["iqr"],
                "mean": b["stats"]["mean"], "ops": b["stats"]["ops"],
                "rounds": b["stats"]["rounds"], "params": b.get("params"),
                "extra_info": b.get("extra_info")} for b in data.get("benchmarks", [])]
    res = {"benchmarks": benches, "pytest_exit": r.returncode,
           "machine_info": data.get("machine_info", {}).get("cpu", {}).get("brand_raw")}
    if r.returncode != 0:
        res["failures"] = r.stdout[-2000:]
    return res


def publish(md: str, png: Path) -> None:
    """Puts the latest table into bench/README.md (between the markers) and the chart next to
    it, so that the committed README shows the latest results."""
    text = README.read_text()
    if MARK_START not in text or MARK_END not in text:
        raise SystemExit(f"bench: {README} has no {MARK_START} ... {MARK_END} section")
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    body = f"{MARK_START}\n{md}\n![ratios to direct and to HAProxy](chart.png)\n{MARK_END}"
    README.write_text(head + body + tail)
    if png.exists():
        shutil.copyfile(png, PUBLISHED_CHART)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    plan = M.Plan.quick() if args.quick else M.Plan()
    if args.repeat:
        plan.repeat = args.repeat
    cores = len(os.sched_getaffinity(0))
    cases = select(all_cases(cores), args.cases)
    if args.quick and not args.cases:  # the many-rules variants take the run past a minute
        cases = [c for c in cases if c.rules <= 1]
    if args.list:
        for c in all_cases(cores):
            print(f"{c.name:24} {c.description}")
        return 0
    if args.report:
        return render(json.loads(args.report.read_text()), args.out, args.publish)
    if os.geteuid() != 0:
        log("needs root (network namespaces, iptables): run `sudo bench/run`")
        return 1
    fp_problem = ""
    if not args.no_install:
        deps.ensure_apt()
        deps.ensure_pip()
        fp_problem = deps.ensure_fastproxy()
    args.out.mkdir(parents=True, exist_ok=True)
    fpload = deps.ensure_fpload(args.out / ".bin")
    barerelay, bare_problem = "", ""
    try:
        barerelay = deps.ensure_barerelay(args.out / ".bin")
        if not deps.readable_by_others(Path(barerelay)):
            bare_problem = f"{barerelay} is not reachable by other users (the proxy UID)"
    except (OSError, subprocess.CalledProcessError) as e:
        bare_problem = f"barerelay.c did not compile: {e}"
    fp_cmd = deps.fastproxy_command()
    r = subprocess.run(fp_cmd + ["run", "--help"], capture_output=True, text=True, cwd="/")
    if not fp_problem and r.returncode != 0:
        fp_problem = "`fastproxy run` is not available (build it, or drop --no-install)"
    ctx = Context(fastproxy=fp_cmd, fastproxy_problem=fp_problem, run_help=r.stdout,
                  barerelay=barerelay, barerelay_problem=bare_problem)
    for c in cases:
        c.skip = c.prerequisite(ctx)
        if c.skip:
            log(f"{c.name}: skipped: {c.skip}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runnable = [c for c in cases if not c.skip]
    notes: List[str] = []
    with L.Lab(fpload, fp_cmd, log_dir) as lab:
        ctx.work_dir = lab.tmp
        runner = Runner(args, plan, ctx, fpload, lab)
        hold_n = runner.hold_conns()
        if hold_n < plan.hold_conns:
            notes.append(f"{hold_n:,} idle connections instead of {plan.hold_conns:,}: the hard "
                         f"RLIMIT_NOFILE here is {L.nofile_hard():,} and a proxy needs two "
                         "descriptors per connection")
        for rep in range(plan.repeat):
            k = rep % max(1, len(runnable))
            order = runnable[k:] + runnable[:k]  # rotate: no case always runs first or last
            log(f"repetition {rep + 1}/{plan.repeat}: {' '.join(c.name for c in order)}")
            for case in order:
                if case.skip:
                    continue
                try:
                    runner.run_case(rep, case)
                except KeyboardInterrupt:
                    raise
                except Exception as e:
                    runner.fail(rep, case, "case", e)
                    traceback.print_exc()
        rules_tool = lab.rules_tool
    if args.no_micro:
        micro = {"skipped": "--no-micro"}
    elif args.quick and not args.micro:
        micro = {"skipped": "not with --quick (add --micro)"}
    else:
        micro = run_micro(args.out, plan)
    if rules_tool == "bench fallback":
        notes.append("interception rules written by the bench itself (same FSM layout): "
                     "`fastproxy iptables` is not available in this checkout")
    if any(c.name == "socat" and not c.skip for c in cases):
        notes.append("socat cannot read SO_ORIGINAL_DST: it forwards to a fixed destination that "
                     "the runner sets before each figure; it forks per connection, so it is "
                     "not asked to hold idle connections")
    summary = R.summarize(runner.samples)
    result = {
        "meta": {
            "started": started, "duration_s": time.monotonic() - t_start, "quick": args.quick,
            "argv": sys.argv[1:], "plan": asdict(plan), "machine": L.env_info(),
            "hold_conns": hold_n, "rules_tool": rules_tool, "notes": notes,
            "fastproxy": {"command": fp_cmd, "problem": fp_problem},
        },
        "cases": [{"name": c.name, "kind": c.kind, "group": c.group,
                   "description": c.description, "skip": c.skip} for c in cases],
        "samples": runner.samples,
        "errors": runner.errors,
        "summary": {c: {f: asdict(s) for f, s in figs.items()} for c, figs in summary.items()},
        "micro": micro,
    }
    result["meta"]["duration_s"] = time.monotonic() - t_start
    jpath = args.out / f"results-{stamp}.json"
    jpath.write_text(json.dumps(result, indent=1))
    render(result, args.out, args.publish)
    log(f"wrote {jpath}, {args.out / 'latest.md'}, {args.out / 'latest.png'} in "
        f"{result['meta']['duration_s']:.0f} s"
        + (f"; {len(runner.errors)} error(s), see the JSON" if runner.errors else ""))
    return 0


def render(result: dict, out: Path, publish_too: bool) -> int:
    """latest.md and latest.png from a result; with publish_too, into the README as well."""
    out.mkdir(parents=True, exist_ok=True)
    md = R.markdown(result)
    (out / "latest.md").write_text(md + "\n")
    png = out / "latest.png"
    err = R.chart(result, png)
    if err:
        log(err)
    if publish_too:
        publish(md, png)
    print(md)
    return 0
