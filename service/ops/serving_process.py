"""Process settings for a serving worker, applied once its knowledge is loaded.

Not for a process that builds many apps, as the tests do: a frozen app that is dropped later is
never collected.

The garbage collector: a worker's modules and knowledge (about 230,000 tracked objects) live as
long as the process, yet each full collection walked them all, measured at 158 ms, a stall that
lands on whichever requests are in flight. Frozen, they are out of the collector's sight.

What remains in sight is the requests' parsed bodies, and a hook call makes no reference cycles
(none were left for the collector after 20 calls of every benchmark body). With the default
young-generation threshold (700 net allocations) each body was walked by the young collections,
again by the middle ones, and the full collections (85 in 600 calls with 8 bodies alive, up to
5,000 resources each) walked every body in flight: 2.7 s of the run's 13.5 s of CPU, pauses of
up to 77 ms, a p99 at 200 resources of 55 ms against a p50 of 8 ms (bench/call_cpu.py's mix, in
process). With a threshold of 100,000 the collector ran once in the run: 9.1 s of CPU, p99 16 ms.
What cycles the HTTP stack makes are still collected, 100,000 allocations later (a few MB).

The heap: glibc's malloc serves a large allocation from mmap only while it is above a threshold
that it raises, up to 32 MB, each time such a block is freed. After a few multi-megabyte request
bodies (an EHR that ignores the prefetch filters sends thousands of resources) the threshold is
high, large blocks come from the heap, and the heap does not shrink: the worker keeps the peak of
its largest request, measured at about 24 MB more after the benchmark. A fixed threshold keeps
large blocks in mmap, returned to the system when freed.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from typing import Final

log = logging.getLogger("rpl_cds")

_M_MMAP_THRESHOLD: Final = -3  # from glibc's malloc.h
# glibc's own starting value; fixing it is what stops the raising.
MMAP_THRESHOLD_BYTES: Final = 128 * 1024
# Net allocations of container objects between young collections (CPython's default: 700).
YOUNG_GENERATION_THRESHOLD: Final = 100_000


def tune_for_serving(young_threshold: int = YOUNG_GENERATION_THRESHOLD) -> None:
    fix_mmap_threshold()
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold for this process; False where malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl (Alpine) has no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if not done:
        log.warning("could not set malloc's mmap threshold; memory may stay at its peak")
    return done
