"""Facts about this machine that choosing settings depends on."""

from __future__ import annotations

import os

import psutil


def usable_cpus() -> int:
    """Logical CPUs this process may run on (affinity masks and container cpusets included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity API
        return os.cpu_count() or 1


def default_threads() -> int:
    """Thread count for llama.cpp: physical cores, capped by the CPUs we may use.

    Hyper-threads share a core's vector units, so llama.cpp is rarely faster with them and
    often slower (DESIGN.md, complaint 8).
    """
    physical = psutil.cpu_count(logical=False) or usable_cpus()
    return max(1, min(physical, usable_cpus()))
