"""The benchmarks' shared workload: file sizes of a static-asset site (images and news pages);
and the machine's CPU clock ticks, which every benchmark that reports CPU reads the same way.

Sizes are lognormal with a median of 12 KiB and sigma 1.0, clipped to 2–300 KiB (mean ≈ 20
KiB). Pure standard library, so the benchmarks' helper processes start fast and do not import
the packages they measure.
"""

from __future__ import annotations

import math
import random

KIB = 1024
MIB = 1 << 20
SIZE_MEDIAN = 12 * KIB
SIZE_SIGMA = 1.0
SIZE_MIN, SIZE_MAX = 2 * KIB, 300 * KIB


def file_size(rng: random.Random) -> int:
    """One file's size in bytes, drawn from ``rng``."""
    size = int(rng.lognormvariate(math.log(SIZE_MEDIAN), SIZE_SIGMA))
    return max(SIZE_MIN, min(SIZE_MAX, size))


def machine_ticks() -> dict[str, int]:
    """Clock ticks of all CPUs so far (``/proc/stat``): busy in processes, in interrupts,
    stolen by the hypervisor, and in total."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return {"tasks": user + nice + system, "irq": irq + softirq, "steal": steal, "all": sum(v)}
