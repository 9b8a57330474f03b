"""Builds tests/fuzz/fuzz_peek.c with clang (libFuzzer + ASan + UBSan) and runs it for a few
seconds over the seed corpus; skipped when clang is not installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fuzz"))
import peek_inputs as pi  # noqa: E402

CLANG = shutil.which("clang")
SECONDS = int(os.environ.get("PEEK_LIBFUZZER_SECONDS", "10"))


@pytest.mark.skipif(CLANG is None, reason="clang not installed")
def test_libfuzzer_harness_runs_clean(tmp_path):
    exe = tmp_path / "fuzz_peek"
    build = subprocess.run(
        [CLANG, "-g", "-O1", "-fsanitize=fuzzer,address,undefined",
         "-fno-sanitize-recover=undefined", "-Wall", "-Wextra", "-Werror",
         "-I", os.path.join(ROOT, "src_c"), os.path.join(ROOT, "src_c", "fp_peek.c"),
         os.path.join(ROOT, "tests", "fuzz", "fuzz_peek.c"), "-o", str(exe)],
        capture_output=True, text=True, timeout=180)
    if build.returncode != 0 and "fuzzer" in build.stderr and "not found" in build.stderr:
        pytest.skip("clang without libFuzzer runtime")
    assert build.returncode == 0, build.stderr
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(pi.seed_corpus()):
        (corpus / f"seed-{i:02d}").write_bytes(seed)
    run = subprocess.run(
        [str(exe), f"-max_total_time={SECONDS}", "-print_final_stats=1",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=SECONDS + 120, cwd=tmp_path)
    tail = run.stderr[-3000:]
    assert run.returncode == 0, tail
    assert not list(tmp_path.glob("crash-*")), tail
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", run.stderr)
    assert runs and int(runs.group(1)) > 1000, tail
