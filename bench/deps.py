"""What the suite needs on a fresh machine, installed only when missing (idempotent):
Debian packages, PyPI packages in the running virtualenv, fastproxy itself built from this
checkout into that virtualenv, and the `fpload` tool compiled from bench/tools/fpload.c.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

from bench.lab import BENCH, ROOT

#: Debian packages: the peers and load generators, and what building fastproxy and fpload takes.
APT_PACKAGES = ("haproxy", "socat", "iperf3", "wrk", "curl", "iptables", "iproute2", "gcc",
                "libc6-dev", "python3-dev", "python3-venv", "util-linux",
                # the per-connection syscall counts (perf stat on tracepoints; strace: fallback)
                "linux-perf", "strace")
#: PyPI packages (module name, requirement); fastproxy's build requirements come from its
#: pyproject.toml.
PIP_PACKAGES = (("matplotlib", "matplotlib>=3.5"), ("pytest", "pytest>=7"),
                ("pytest_benchmark", "pytest-benchmark>=4"), ("yaml", "PyYAML>=5.4"))


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def missing_apt(packages: Sequence[str]) -> List[str]:
    out = []
    for p in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        if r.returncode != 0 or "install ok installed" not in r.stdout:
            out.append(p)
    return out


def ensure_apt(packages: Sequence[str] = APT_PACKAGES) -> None:
    miss = missing_apt(packages)
    if not miss:
        return
    log(f"installing Debian packages: {' '.join(miss)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *miss],
                   check=True, env=env)


def ensure_pip() -> None:
    miss = [req for mod, req in PIP_PACKAGES if importlib.util.find_spec(mod) is None]
    if miss:
        log(f"installing PyPI packages: {' '.join(miss)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *miss], check=True)


def source_hash() -> str:
    """Hash of everything that goes into the fastproxy build."""
    h = hashlib.sha256()
    files = [ROOT / "setup.py", ROOT / "pyproject.toml"]
    for d in ("fastproxy", "src_c"):
        files += sorted(p for p in (ROOT / d).rglob("*") if p.is_file()
                        and p.suffix in (".py", ".pyx", ".pxd", ".pxi", ".c", ".h", ".yaml",
                                         ".json") and p.name != "_core.c")
    for p in files:
        if p.exists():
            h.update(str(p.relative_to(ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def venv_root() -> Path:
    return Path(sys.prefix)


def fastproxy_command() -> List[str]:
    """The installed `fastproxy` console script of this virtualenv (not `python -m`, which
    would import the un-built source tree from the current folder)."""
    return [str(Path(sys.executable).parent / "fastproxy")]


def ensure_fastproxy() -> str:
    """Builds fastproxy from this checkout into the running virtualenv (an editable install, as
    the project's own instructions do; the extension is built in place) when its sources
    changed since the last build. Returns '' or why fastproxy is not usable."""
    stamp = venv_root() / ".fastproxy-bench-source"
    want = source_hash()
    have = stamp.read_text().strip() if stamp.exists() else ""
    if have != want or _run_help():
        log("building fastproxy from this checkout into the bench virtualenv")
        reqs = build_requires()
        if reqs:  # the build runs without isolation, so the venv must meet them
            r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *reqs],
                               capture_output=True, text=True)
            if r.returncode != 0:
                return "cannot install fastproxy's build requirements: " + \
                    (r.stderr.strip().splitlines() or [""])[-1][:200]
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation",
                            "-e", str(ROOT)], capture_output=True, text=True)
        if r.returncode != 0:
            err = [l for l in r.stderr.strip().splitlines() if "rror" in l] or [""]
            return "fastproxy failed to build: " + err[-1].strip()[:200]
        stamp.write_text(want)
    problem = _run_help()
    if problem:
        return problem
    if not readable_by_others(ROOT):
        return (f"{ROOT} is not readable by other users: the sidecar, running as UID 1500, "
                "could not import from it")
    return ""


def build_requires() -> List[str]:
    """[build-system] requires of pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
        return list(tomllib.loads(text).get("build-system", {}).get("requires", []))
    except ImportError:  # Python < 3.11: the one line we need, read plainly
        m = re.search(r"^requires\s*=\s*\[(.*?)\]", text, re.M | re.S)
        return re.findall(r'"([^"]+)"', m.group(1)) if m else []


def _run_help() -> str:
    """'' when `fastproxy run --help` works, else its last error line."""
    exe = fastproxy_command()[0]
    if not Path(exe).exists():
        return f"{exe} is missing"
    r = subprocess.run([exe, "run", "--help"], capture_output=True, text=True, cwd="/")
    if r.returncode == 0:
        return ""
    return "`fastproxy run` is not available: " + (r.stderr.strip().splitlines() or [""])[-1][:200]


def readable_by_others(path: Path) -> bool:
    """Every folder from / to `path` is searchable and `path` readable by any user."""
    p = path.resolve()
    for d in [p] + list(p.parents):
        mode = d.stat().st_mode
        if not mode & 0o001:
            return False
    return bool(path.stat().st_mode & 0o004)


def ensure_tool(out_dir: Path, name: str) -> str:
    """Compiles bench/tools/<name>.c into out_dir when the source is newer. Returns the path."""
    src = BENCH / "tools" / f"{name}.c"
    exe = out_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(exe), str(src), "-lpthread"],
                       check=True)
    return str(exe)


def ensure_fpload(out_dir: Path) -> str:
    """The suite's load generator and servers (bench/tools/fpload.c)."""
    return ensure_tool(out_dir, "fpload")


def ensure_barerelay(out_dir: Path) -> str:
    """The bare splice relay of the `bare-relay` case (bench/tools/barerelay.c); it runs as the
    proxy UID, so the binary is made executable by everyone."""
    exe = ensure_tool(out_dir, "barerelay")
    os.chmod(exe, 0o755)
    return exe
