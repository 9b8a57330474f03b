"""Builds each libFuzzer harness of tests/fuzz/ (peek parsers, HTTP keep-alive framing) with clang
(libFuzzer + ASan + UBSan) and runs it for a bounded time over its committed seed corpus
(tests/fuzz/corpus/<target>/, which also holds every crash found so far as a regression). Without
clang or its libFuzzer runtime the test skips, except in CI (CI=true), where it fails: tests/setup.sh
installs both."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import cannot_run

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"
#: target name -> harness; each fuzzes src_c/fp_peek.c
TARGETS = {"peek": "fuzz_peek.c", "http": "fuzz_http.c"}
SECONDS = int(os.environ.get("FUZZ_SECONDS", os.environ.get("PEEK_LIBFUZZER_SECONDS", "15")))
FLAGS = ["-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined",
         "-fno-omit-frame-pointer", "-Wall", "-Wextra", "-Werror"]


def build(target: str, out: Path) -> Path:
    """Compiles the harness of `target` into out/fuzz_<target> (skips or fails without clang)."""
    clang = shutil.which("clang")
    if clang is None:
        cannot_run("clang is not installed (apt-get install clang libclang-rt-14-dev)")
    exe = out / f"fuzz_{target}"
    r = subprocess.run([clang, *FLAGS, "-I", str(ROOT / "src_c"), str(ROOT / "src_c" / "fp_peek.c"),
                        str(FUZZ / TARGETS[target]), "-o", str(exe)],
                       capture_output=True, text=True, timeout=180)
    if r.returncode != 0 and re.search(r"libclang_rt\.(fuzzer|asan|ubsan)\S*", r.stderr):
        cannot_run(f"clang without its libFuzzer/sanitizer runtime (libclang-rt-14-dev): "
                   f"{r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr
    return exe


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_libfuzzer_target_runs_clean(target: str, tmp_path: Path) -> None:
    seeds = FUZZ / "corpus" / target
    assert seeds.is_dir() and any(seeds.iterdir()), f"no committed seed corpus in {seeds}"
    exe = build(target, tmp_path)
    work = tmp_path / "corpus"  # new units go here, the committed corpus is only read
    work.mkdir()
    run = subprocess.run(
        [str(exe), f"-max_total_time={SECONDS}", "-print_final_stats=1", "-timeout=10",
         "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/", str(work), str(seeds)],
        capture_output=True, text=True, timeout=SECONDS + 120, cwd=tmp_path)
    tail = run.stderr[-4000:]
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + \
        sorted(p.name for p in tmp_path.glob("timeout-*")) + sorted(p.name for p in tmp_path.glob("leak-*"))
    assert run.returncode == 0 and not crashes, f"{target}: {crashes}\n{tail}"
    assert "runtime error:" not in run.stderr, tail
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", run.stderr)
    assert runs and int(runs.group(1)) > 1000, tail
