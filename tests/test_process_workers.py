"""How many workers `fastproxy run` starts without --workers: one per CPU the process may use,
the affinity mask capped by the cgroup's CPU quota (a pod's CPU limit), read from fake cgroup
trees (v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`), the smallest along the path."""
from __future__ import annotations

import os
from pathlib import Path

from fastproxy.process import cgroup_cpu_limit, default_workers

CORES = len(os.sched_getaffinity(0))


def v2_tree(tmp: Path, limits: dict) -> tuple:
    """/proc/self/cgroup naming /kubepods/pod1/ctr, cpu.max at the levels given."""
    root = tmp / "cgroup"
    for rel, value in limits.items():
        d = root / rel if rel else root
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(value + "\n")
    (root / "kubepods/pod1/ctr").mkdir(parents=True, exist_ok=True)
    me = tmp / "self-cgroup"
    me.write_text("0::/kubepods/pod1/ctr\n")
    return str(root), str(me)


def test_v2_quota_of_the_container(tmp_path: Path) -> None:
    root, me = v2_tree(tmp_path, {"kubepods/pod1/ctr": "150000 100000"})
    assert cgroup_cpu_limit(root, me) == 1.5
    assert default_workers(root, me) == min(CORES, 2)


def test_v2_the_smallest_limit_on_the_path_counts(tmp_path: Path) -> None:
    root, me = v2_tree(tmp_path, {"kubepods/pod1": "50000 100000", "kubepods/pod1/ctr": "max 100000"})
    assert cgroup_cpu_limit(root, me) == 0.5
    assert default_workers(root, me) == 1  # at least one, never zero


def test_no_limit_means_every_core(tmp_path: Path) -> None:
    root, me = v2_tree(tmp_path, {"kubepods/pod1/ctr": "max 100000", "": "max"})
    assert cgroup_cpu_limit(root, me) is None
    assert default_workers(root, me) == CORES
    assert default_workers(str(tmp_path / "nowhere"), str(tmp_path / "nothing")) == CORES


def test_v1_cfs_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    leaf = root / "cpu,cpuacct" / "kubepods/pod1/ctr"
    leaf.mkdir(parents=True)
    (leaf / "cpu.cfs_quota_us").write_text("100000\n")
    (leaf / "cpu.cfs_period_us").write_text("100000\n")
    me = tmp_path / "self-cgroup"
    me.write_text("4:memory:/kubepods/pod1/ctr\n3:cpu,cpuacct:/kubepods/pod1/ctr\n0::/\n")
    assert cgroup_cpu_limit(str(root), str(me)) == 1.0
    assert default_workers(str(root), str(me)) == 1
    (leaf / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(str(root), str(me)) is None
