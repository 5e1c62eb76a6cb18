"""How many CPU threads torch should use for training on a machine that may be busy.

torch's default is one OpenMP thread per core of the affinity mask. Every parallel region then
waits for its slowest thread, so when other processes hold cores, a preempted worker stalls the
whole step: measured on this project's 2-core machine with two other CPU-bound processes, AutoInt
at B=256 trained at 10,196 samples/s with 1 thread and 349 samples/s with 2 (issue 13). Using only
the cores that are idle avoids it (measured again on 2026-12-01 with two ``nice -n 19`` busy
loops and a preprocessing job: 12,628 samples/s with 1 thread, 720 with 2).
"""
from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_cpus(cpus: int | None = None, load: float | None = None) -> int:
    """The CPUs of ``cpus`` (default: :func:`available_cpus`) not taken by the 1-minute load
    average ``load`` (default: the system's; this process, not yet busy, is hardly in it), at
    least 1: ``max(1, floor(cpus - load + 0.5))``."""
    cpus = available_cpus() if cpus is None else cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    return max(1, min(cpus, int(cpus - load + 0.5)))


def cpu_threads_per_process() -> int:
    """The default torch thread count of one training process: :func:`idle_cpus` shared by the
    ``LOCAL_WORLD_SIZE`` processes ``torchrun`` starts on this host (at least 1)."""
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, idle_cpus() // local_processes)
