"""The e2e tests again, against the other builds tests/setup.sh makes beside the test venv:

- release: the build that ships (NDEBUG, -O2, no debug counters);
- asan: the debug build compiled with AddressSanitizer + UndefinedBehaviorSanitizer, the sidecar
  run by CPython with the ASan runtime preloaded (bin/fastproxy-asan). Any report (ASan error,
  UBSan "runtime error") fails the test, even when every e2e test passed.

Each variant runs a child pytest over the e2e modules with FASTPROXY_EXE pointing the sidecar
fixtures at the variant's `fastproxy` (clients, servers and the test code itself stay on this
venv). Missing variant venvs skip, except in CI (CI=true), where they fail."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import cannot_run

ROOT = Path(__file__).resolve().parent.parent
#: The e2e modules each variant runs, and a -k expression. The debug suite runs every module; the
#: variants run the relay and policy e2e within CI's budget (about 2 minutes each on 2 cores):
#: ASan skips the 10 s CPU measurements (they prove no spin, not memory safety), the release
#: build keeps them (its -O2 relay is the one that ships) and its drain/reload lifecycle.
VARIANTS: Dict[str, Tuple[List[str], str]] = {
    "asan": (["tests/test_sidecar_e2e.py", "tests/test_policy_e2e.py",
              "tests/test_relay_faults_e2e.py", "tests/test_policy_tunnels_e2e.py"],
             "not does_not_spin"),
    "release": (["tests/test_sidecar_e2e.py", "tests/test_policy_e2e.py",
                 "tests/test_relay_faults_e2e.py", "tests/test_sidecar_lifecycle.py"], ""),
}
#: Where python-asan's runtimes write their reports (see tests/setup.sh).
REPORTS = Path("/var/tmp") / f"{Path(sys.prefix).name}-asan-reports"


def variant_exe(variant: str) -> Path:
    venv = Path(f"{sys.prefix}-{variant}")
    exe = venv / "bin" / ("fastproxy-asan" if variant == "asan" else "fastproxy")
    if not os.access(exe, os.X_OK):
        cannot_run(f"{exe} missing: run tests/setup.sh {sys.prefix}")
    return exe


def sanitizer_reports() -> Dict[str, str]:
    if not REPORTS.is_dir():
        return {}
    return {p.name: p.read_text(errors="replace") for p in sorted(REPORTS.iterdir()) if p.is_file()}


def clear_reports() -> None:
    for p in REPORTS.glob("*"):
        if p.is_file():
            p.unlink()


@pytest.mark.netns
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_e2e_under_build(variant: str) -> None:
    exe = variant_exe(variant)
    interp = exe.read_text().splitlines()[0][2:].strip()
    probe = subprocess.run([interp, "-c", "import fastproxy._core as c; print(int(c.DEBUG), c.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert probe.returncode == 0, probe.stderr[-2000:]
    debug, so = probe.stdout.split()
    sanitized = b"libasan" in Path(so).read_bytes()
    if variant == "asan":
        assert debug == "1" and sanitized, f"{so} is not the ASan debug build"
        REPORTS.mkdir(mode=0o1777, exist_ok=True)
        clear_reports()
    else:
        assert debug == "0" and not sanitized, f"{so} is not the release build"
    t0 = time.monotonic()
    modules, select = VARIANTS[variant]
    missing = [m for m in modules if not (ROOT / m).is_file()]
    assert not missing, f"e2e modules gone: {missing} (update VARIANTS)"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                        *(["-k", select] if select else []), *modules],
                       env=dict(os.environ, FASTPROXY_EXE=str(exe)), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    out = r.stdout[-6000:] + r.stderr[-2000:]
    reports = sanitizer_reports() if variant == "asan" else {}
    assert not reports, "sanitizer reports:\n" + "\n".join(f"--- {k}\n{v[-4000:]}" for k, v in reports.items())
    assert r.returncode == 0, f"e2e tests failed under the {variant} build ({took:.0f}s):\n{out}"
    assert " passed" in r.stdout, out
