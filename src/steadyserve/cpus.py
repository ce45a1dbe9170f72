"""How many CPUs this process may really use, and the worker's thread defaults from that.

``os.cpu_count()`` is the node's core count; what a process gets is less when its affinity mask
is narrower (``taskset``, Kubernetes' static CPU manager) or a cgroup CPU quota caps it (a
Kubernetes CPU limit: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``,
the tightest along the cgroup path). A torch intra-op pool larger than that makes every parallel
region wait for a thread that is not running; with OpenMP's default *active* wait policy the
waiting threads also spin and take the CPU from the one they wait for. One busy neighbour then
slows generation tenfold or more (issue 12).

So the model worker gets (:func:`worker_env`, set by the supervisor before the worker imports
torch, and :func:`plan_threads`, applied by the worker):

* ``torch_threads`` = the usable CPUs, minus one kept for the HTTP process when there are more
  than two (``--torch_threads`` overrides);
* ``OMP_WAIT_POLICY=PASSIVE`` with a very short spin before an idle thread sleeps
  (``GOMP_SPINCOUNT=1000``, about 10 us; libgomp's own default spins ~3 ms, ACTIVE minutes;
  ``KMP_BLOCKTIME=0`` for Intel OpenMP), unless the environment sets them already. It trades
  the quiet machine against the crowded one. Measured on 2 vCPUs (issue 12): t5-small at batch
  32 ran 700-710 tok/s with no spin, 748-758 with 1000-3000 and 805-815 with 10000; with one
  busy neighbour process, the gpt2 shape kept 0.72-0.77x of its quiet throughput with no spin,
  0.57-0.58x with 1000 and only 0.31x with 10000 (a spinning thread takes the core of the one
  it waits for). ``GOMP_SPINCOUNT=0`` suits a node known to be crowded, a larger count one
  whose cores are the model's alone;
* ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = the thread count, so pools created before
  ``torch.set_num_threads`` are the right size too.

Pure functions over paths and numbers, so they are tested with fake cgroup trees.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: names the variables of :func:`worker_env` that are our defaults (not the operator's)
DEFAULTS_ENV = "STEADYSERVE_THREAD_DEFAULTS"
#: libgomp spins before an idle thread sleeps (~100k per ms): ~10 us, see the module docstring
SPIN_COUNT = "1000"
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where that is not available)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(path: str) -> list[str]:
    """``/a/b`` -> ``["/a/b", "/a", "/"]``."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) if i else "/" for i in range(len(parts), -1, -1)]


def _v2_quota(text: str | None) -> float | None:
    if not text:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(quota: str | None, period: str | None) -> float | None:
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The tightest CPU quota (in CPUs, may be fractional) on this process's cgroup path, or
    ``None`` when there is none. Reads cgroup v2 and v1 (``cpu`` controller) layouts; the cgroup
    root itself is checked too (a container sees its own cgroup mounted as the root)."""
    limits: list[float] = []
    text = _read(proc_self_cgroup) or ""
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path:
            continue
        if hier == "0" and controllers == "":  # cgroup v2
            for p in _ancestors(path):
                q = _v2_quota(_read(root / p.lstrip("/") / "cpu.max"))
                if q is not None:
                    limits.append(q)
        elif "cpu" in controllers.split(","):  # cgroup v1
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                base = root / mount
                if not base.is_dir():
                    continue
                for p in _ancestors(path):
                    d = base / p.lstrip("/")
                    q = _v1_quota(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us"))
                    if q is not None:
                        limits.append(q)
                break
    q = _v2_quota(_read(root / "cpu.max"))
    if q is not None:
        limits.append(q)
    return min(limits) if limits else None


def usable_cpus(affinity: int | None = None, quota: float | None = None) -> int:
    """Whole CPUs this process can keep busy: the affinity mask, capped by the quota rounded
    up (a quota of 1.5 CPUs runs two threads better than one), at least 1."""
    n = affinity_cpus() if affinity is None else affinity
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)


@dataclass(frozen=True)
class ThreadPlan:
    """The worker's torch threads and where they came from (for the log line)."""

    threads: int
    usable: int
    reason: str


def plan_threads(usable: int, override: int | None = None) -> ThreadPlan:
    """``--torch_threads`` when given; else the usable CPUs, one kept for the HTTP process
    when there are more than two."""
    if override:
        return ThreadPlan(override, usable, "--torch_threads")
    if usable > 2:
        return ThreadPlan(usable - 1, usable, f"{usable} usable CPUs, one kept for the server")
    return ThreadPlan(usable, usable, f"{usable} usable CPUs")


def detect(override: int | None = None) -> ThreadPlan:
    """:func:`plan_threads` for this process (affinity and cgroup quota)."""
    return plan_threads(usable_cpus(quota=cgroup_cpu_limit()), override)


def worker_env(env: Mapping[str, str], plan: ThreadPlan) -> dict[str, str]:
    """Variables to add to the worker's environment (values the environment already sets win,
    except the thread counts when ``--torch_threads`` was given). ``DEFAULTS_ENV`` lists
    the ones that are our defaults rather than the operator's (see :func:`drop_defaults`)."""
    out: dict[str, str] = {}
    defaults = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": SPIN_COUNT, "KMP_BLOCKTIME": "0"}
    for key, value in defaults.items():
        if key not in env:
            out[key] = value
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if key not in env or plan.reason == "--torch_threads":
            out[key] = str(plan.threads)
    # the thread counts of --torch_threads are the operator's choice, not a default
    forced = plan.reason == "--torch_threads"
    ours = [k for k in out if k in defaults or not forced]
    out[DEFAULTS_ENV] = ",".join(sorted(ours))
    return out


def drop_defaults(env: MutableMapping[str, str]) -> list[str]:
    """Take our OpenMP defaults (not the operator's settings) out of ``env``: for processes
    that manage their own threads (vLLM's engine core and executor pin and size theirs).
    Returns the names dropped."""
    names = [k for k in env.pop(DEFAULTS_ENV, "").split(",") if k]
    for name in names:
        env.pop(name, None)
    return names
