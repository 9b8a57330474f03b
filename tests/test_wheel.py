"""Packaging: the wheel `python -m build` makes (from its sdist) installs and runs where there
is no compiler (a fresh virtualenv, PATH without gcc/cc, CC pointing at `false`, binaries only,
no index).

Slow (builds the C extension in an isolated environment): runs with FASTPROXY_IMAGE_TEST=1,
together with the container image test."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.environ.get("FASTPROXY_IMAGE_TEST", "") in ("", "0"),
                                reason="packaging test: set FASTPROXY_IMAGE_TEST=1 (slow: builds a wheel)")


def test_wheel_installs_and_runs_without_a_compiler(tmp_path: Path) -> None:
    pytest.importorskip("build")
    src = tmp_path / "src"
    # a clean checkout's files (no build outputs, no compiled extension lying around)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                           timeout=60).stdout.decode().split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    t0 = time.monotonic()
    dist = tmp_path / "dist"
    # `python -m build`: an sdist, then the wheel built from it (so MANIFEST.in must be complete)
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(dist.glob("fastproxy-*.whl"))
    assert len(wheels) == 1 and "linux" in wheels[0].name, wheels
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "fastproxy/py.typed" in names and any(n.startswith("fastproxy/_core.") for n in names)
    assert not any(n.endswith(".c") for n in names)  # no generated C in the wheel
    # its dependencies as binaries too, then install with no index and no compiler reachable
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
                        "-d", str(dist), *deps], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    bare = {"PATH": f"{venv}/bin", "CC": "/bin/false", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    assert shutil.which("gcc", path=bare["PATH"]) is None and shutil.which("cc", path=bare["PATH"]) is None
    r = subprocess.run([f"{venv}/bin/python", "-m", "pip", "install", "-q", "--no-index",
                        "--only-binary", ":all:", "--find-links", str(dist), str(wheels[0])],
                       capture_output=True, text=True, timeout=300, env=bare, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([f"{venv}/bin/fastproxy", "--version"], capture_output=True, text=True,
                       timeout=60, env=bare, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("fastproxy "), r.stderr
    r = subprocess.run([f"{venv}/bin/python", "-c",
                        "import fastproxy, fastproxy._core as c; print(c.DEBUG, len(fastproxy.__all__))"],
                       capture_output=True, text=True, timeout=60, env=bare, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "False"  # the release build
    print(f"\nwheel {wheels[0].name}: built and installed in {time.monotonic() - t0:.0f} s")
