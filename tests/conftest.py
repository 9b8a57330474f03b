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


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    why = netns_unavailable()
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


@pytest.fixture(scope="session")
def fastproxy_exe() -> str:
    """The `fastproxy` executable the sidecar tests run (skips them when unusable)."""
    exe, why = netkit.fastproxy_exe()
    if why:
        pytest.skip(why)
    return exe


@pytest.fixture(autouse=True)
def sidecars_back_to_idle() -> Iterator[None]:
    """After each test, every sidecar still running must be idle again: no connection open, no
    pipe lent out, and in a debug build no connection object, fd or unpooled pipe left."""
    yield
    for sc in list(netkit.RUNNING_SIDECARS):
        if sc.proc is not None and sc.proc.poll() is None:
            sc.wait_idle(timeout=3.0)
