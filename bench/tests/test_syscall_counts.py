"""The per-connection syscall counts: parsing what perf stat and strace -c print, and perf
counting every thread of an attached process (`pytest bench/tests`; the last test needs perf
and root or a permissive perf_event_paranoid)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bench import lab as L, measure as M


def test_perf_output_folds_aliases_and_total():
    text = ("2000,,raw_syscalls:sys_enter,1206855,100.00,90.317,K/sec\n"
            "10,,syscalls:sys_enter_accept4,1206855,100.00,0.000,/sec\n"
            "3,,syscalls:sys_enter_accept,1206855,100.00,0.000,/sec\n"
            "7,,syscalls:sys_enter_epoll_wait,1,100.00,,\n"
            "5,,syscalls:sys_enter_epoll_pwait,1,100.00,,\n"
            "<not counted>,,syscalls:sys_enter_splice,0,0.00,,\n"
            "1.21,msec,task-clock,1206855,100.00,0.012,CPUs utilized\n")
    assert M._perf_counts(text) == {"total": 2000.0, "accept4": 13.0, "epoll_wait": 12.0}


def test_strace_summary_rows_with_and_without_errors():
    text = ("% time     seconds  usecs/call     calls    errors syscall\n"
            "------ ----------- ----------- --------- --------- ----------------\n"
            " 52.66    0.023535         840        28         2 accept\n"
            " 23.87    0.010668           5      2000           splice\n"
            "------ ----------- ----------- --------- --------- ----------------\n"
            "100.00    0.034203           8      2028         2 total\n")
    assert M._strace_counts(text) == {"accept4": 28.0, "splice": 2000.0, "total": 2028.0}


THREADS = r"""
import os, sys, threading, time
go = threading.Event()
def work():
    go.wait()
    for _ in range(5000):
        os.getppid()
ts = [threading.Thread(target=work) for _ in range(2)]
[t.start() for t in ts]
print('ready', flush=True)
sys.stdin.readline(); go.set(); [t.join() for t in ts]
print('done', flush=True); sys.stdin.readline()
"""


@pytest.mark.skipif(not L.which("perf"), reason="perf is not installed")
def test_perf_stat_on_a_pid_counts_all_its_threads():
    p = subprocess.Popen([sys.executable, "-c", THREADS], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        perf = subprocess.Popen([L.which("perf"), "stat", "-x,", "-e",
                                 "syscalls:sys_enter_getppid", "-p", str(p.pid)],
                                stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        if perf.poll() is not None:
            pytest.skip(f"perf cannot attach here: {perf.stderr.read()[-200:]}")
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline() == "done\n"
        perf.send_signal(signal.SIGINT)
        _, err = perf.communicate(timeout=10)
        got = [l.split(",")[0] for l in err.splitlines() if "sys_enter_getppid" in l]
        assert got and int(got[0]) >= 10000   # both threads' 5,000 calls
    finally:
        p.kill()
        p.wait()
