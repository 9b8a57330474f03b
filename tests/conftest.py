"""Shared pytest setup: the `netns` marker's preconditions and a module-wide topology with the
standard test servers (see netkit.py)."""
from __future__ import annotations

import os
import shutil
from typing import Iterator

import pytest

import netkit

PREFIX = "fpt"


def netns_unavailable() -> str:
    """Why netns tests cannot run here, or '' when they can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "setpriv", "curl", "openssl"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.access(netkit.PY, os.X_OK):
        return f"needs {netkit.PY}"
    return ""


IN_CI = os.environ.get("CI", "") not in ("", "0", "false")


def cannot_run(why: str) -> None:
    """Skips a test whose prerequisites are missing, except in CI, where a machine prepared by
    tests/setup.sh must run everything: there it is a failure."""
    if IN_CI:
        pytest.fail(f"CI must run this test, but {why}", pytrace=False)
    pytest.skip(why)


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    why = netns_unavailable()
    if why and IN_CI:
        raise pytest.UsageError(f"CI must run the netns tests, but they cannot run here: {why}")
    if why:
        skip = pytest.mark.skip(reason=f"netns tests: {why}")
        for item in items:
            if "netns" in item.keywords:
                item.add_marker(skip)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not netns_unavailable():
        netkit.cleanup_stale(PREFIX)


@pytest.fixture(scope="module")
def topo() -> Iterator[netkit.Topology]:
    """One topology per test module, with the standard servers running in ext."""
    with netkit.Topology(prefix=PREFIX) as t:
        t.start_servers()
        yield t


@pytest.fixture(scope="module")
def rules(topo: netkit.Topology, fastproxy_exe: str) -> None:
    """The interception rules of `fastproxy iptables --apply` in the module's app namespace
    (once per module; the sidecars of the module then start with rules=False)."""
    netkit.Sidecar(topo.app, fastproxy_exe, topo.tmp).apply_rules()


@pytest.fixture(scope="session")
def fastproxy_exe() -> str:
    """The `fastproxy` executable the sidecar tests run (skips them when unusable)."""
    exe, why = netkit.fastproxy_exe()
    if why:
        cannot_run(why)
    return exe


@pytest.fixture(autouse=True)
def sidecars_back_to_idle() -> Iterator[None]:
    """After each test, every sidecar still running must be idle again: no connection open, no
    pipe lent out, and in a debug build no connection object, fd or unpooled pipe left."""
    yield
    for sc in list(netkit.RUNNING_SIDECARS):
        if sc.proc is not None and sc.proc.poll() is None:
            sc.wait_idle(timeout=3.0)
