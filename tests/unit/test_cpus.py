"""CPU detection and the worker's thread defaults (steadyserve/cpus.py), on fake cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from steadyserve import cpus


def _tree(tmp_path: Path, files: dict[str, str], self_cgroup: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(self_cgroup)
    return root, proc


def test_v2_quota_on_own_cgroup(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        {"kubepods/pod1/c1/cpu.max": "150000 100000", "kubepods/cpu.max": "max 100000"},
        "0::/kubepods/pod1/c1\n",
    )
    assert cpus.cgroup_cpu_limit(root, proc) == pytest.approx(1.5)


def test_v2_tightest_ancestor_wins(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        {"a/b/cpu.max": "400000 100000", "a/cpu.max": "100000 100000"},
        "0::/a/b\n",
    )
    assert cpus.cgroup_cpu_limit(root, proc) == pytest.approx(1.0)


def test_v2_container_sees_its_cgroup_as_root(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, {"cpu.max": "200000 100000"}, "0::/\n")
    assert cpus.cgroup_cpu_limit(root, proc) == pytest.approx(2.0)


def test_v2_no_limit(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, {"user.slice/cpu.max": "max 100000"}, "0::/user.slice\n")
    assert cpus.cgroup_cpu_limit(root, proc) is None


@pytest.mark.parametrize("text", ["", "garbage", "abc 100000", "100000 0", "-1 100000", "1 2 3"])
def test_v2_malformed_cpu_max_is_no_limit(tmp_path: Path, text: str) -> None:
    root, proc = _tree(tmp_path, {"x/cpu.max": text}, "0::/x\n")
    assert cpus.cgroup_cpu_limit(root, proc) is None


def test_v1_quota(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            "memory/docker/abc/memory.limit_in_bytes": "1000",
        },
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
    )
    assert cpus.cgroup_cpu_limit(root, proc) == pytest.approx(2.5)


def test_v1_unlimited(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
        "3:cpu:/\n",
    )
    assert cpus.cgroup_cpu_limit(root, proc) is None


def test_missing_files_mean_no_limit(tmp_path: Path) -> None:
    assert cpus.cgroup_cpu_limit(tmp_path / "none", tmp_path / "none-either") is None


@pytest.mark.parametrize(
    ("affinity", "quota", "usable"),
    [(16, None, 16), (16, 2.0, 2), (16, 1.5, 2), (16, 0.25, 1), (2, 8.0, 2), (1, None, 1)],
)
def test_usable_cpus(affinity: int, quota: float | None, usable: int) -> None:
    assert cpus.usable_cpus(affinity, quota) == usable


def test_usable_cpus_of_this_process() -> None:
    assert 1 <= cpus.usable_cpus() <= (os.cpu_count() or 1)
    assert cpus.detect().threads >= 1


@pytest.mark.parametrize(
    ("usable", "override", "threads"),
    [(1, None, 1), (2, None, 2), (3, None, 2), (16, None, 15), (16, 4, 4), (2, 1, 1)],
)
def test_plan_threads(usable: int, override: int | None, threads: int) -> None:
    assert cpus.plan_threads(usable, override).threads == threads


def test_worker_env_defaults_and_what_the_environment_keeps() -> None:
    plan = cpus.plan_threads(4)
    env = cpus.worker_env({}, plan)
    assert env == {
        "OMP_WAIT_POLICY": "PASSIVE",
        "GOMP_SPINCOUNT": "1000",
        "KMP_BLOCKTIME": "0",
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        cpus.DEFAULTS_ENV: "GOMP_SPINCOUNT,KMP_BLOCKTIME,MKL_NUM_THREADS,OMP_NUM_THREADS,"
        "OMP_WAIT_POLICY",
    }
    # the operator's own settings win ...
    kept = cpus.worker_env({"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "8"}, plan)
    assert "OMP_WAIT_POLICY" not in kept and "OMP_NUM_THREADS" not in kept
    # ... except the thread count when --torch_threads says otherwise
    forced = cpus.worker_env({"OMP_NUM_THREADS": "8"}, cpus.plan_threads(4, 1))
    assert forced["OMP_NUM_THREADS"] == "1"


def test_drop_defaults_removes_ours_and_keeps_the_operators() -> None:
    """vLLM's processes manage their own threads: our defaults are taken out for them, what the
    operator set (the environment, --torch_threads) stays."""
    env = {"OMP_WAIT_POLICY": "ACTIVE", "PATH": "/bin"}
    env.update(cpus.worker_env(env, cpus.plan_threads(2)))
    assert cpus.drop_defaults(env) == [
        "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS", "OMP_NUM_THREADS"
    ]  # fmt: skip
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "PATH": "/bin"}
    forced = dict(cpus.worker_env({}, cpus.plan_threads(4, 1)))
    cpus.drop_defaults(forced)
    assert forced == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert cpus.drop_defaults({}) == []
