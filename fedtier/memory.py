"""The allocator settings a model-moving process needs, and giving memory back between rounds.

Every 1 MiB model chunk makes a few chunk-sized buffers (the file read, the protobuf
message, its serialized bytes, gRPC's slices). With glibc's default settings those
buffers sit right at its adaptive mmap and trim thresholds, so a good share of them is
fresh memory from the kernel, page-faulted in and handed back on free: measured here, building and
serializing one 1 MiB ``ModelChunk`` took 2.8 ms that way against 0.15 ms with the
settings below, and a 1 GiB round moves thousands of chunks. ``tune_allocator`` fixes
the thresholds (buffers up to 32 MiB are reused from the heap, and up to 128 MiB of free
heap is kept) at the start of every fedtier process.

A combiner handles model-sized buffers on hundreds of gRPC worker threads. glibc's
malloc gives threads their own arenas (up to 8 per core) and keeps what a thread frees
for that thread's next allocation, so after a round the process holds free memory in
many arenas: its RSS climbs round after round until every arena has seen its largest
round, then levels off (docs/reliability.md, "Load"). Nothing is leaked, but an
operator watching RSS cannot tell that from a leak, and with the thresholds above the
process would also keep its busiest round's buffers. ``malloc_trim(0)`` after each round
returns the free pages of every arena, so RSS between rounds stays close to what the
process holds (what remains is fragmentation and the stacks of the threads it grew).

During a round the same effect raises the peak: each upload stream's thread frees its
chunk buffers into its own arena, and each arena keeps up to the trim threshold, so the
peak grew with the number of concurrent uploads. ``tune_allocator`` therefore also caps
the arenas at one per core (glibc's default is eight per core): on this project's 2-core
machine, with a 1 GiB model and 10 clients, the combiner's peak fell from 1,451-1,523 MiB
to 1,201-1,268 MiB and its RSS between rounds from 211 to 79 MiB, with round times within
the run-to-run spread (docs/performance.md, issue 7, session 4). Threads share arenas
anyway once there are more threads than arenas; small allocations are served from each
thread's own cache without the arena lock.

Setting ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES`` in the environment leaves all of these to the
operator.

``python_heap_bytes`` reports what Python objects hold when the process runs under
``PYTHONTRACEMALLOC=1`` (tracemalloc), so a real leak of Python objects shows as a
growing number in the round log line, separately from the allocator's behaviour.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import tracemalloc
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _libc() -> Any:
    """glibc, or None where there is no malloc_trim (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20   # larger than any chunk buffer (gRPC messages are at most 16 MiB)
TRIM_THRESHOLD = 128 << 20  # free heap kept before it is returned; release_free_memory returns the rest
GLIBC_TUNING_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX",
                    "GLIBC_TUNABLES")


def default_arena_max() -> int:
    return max(2, os.cpu_count() or 1)


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD,
                   arena_max: int | None = None) -> bool:
    """Fix glibc's mmap and trim thresholds so chunk-sized buffers are reused, not page-faulted
    in each time, and cap its arenas (default: one per core, at least 2) so concurrent streams
    do not each keep their own free memory; True if applied. Call it before threads start:
    arenas made earlier stay. An operator's own glibc settings in the environment win, and
    elsewhere than glibc this does nothing."""
    if any(name in os.environ for name in GLIBC_TUNING_ENV):
        log.debug("allocator left as configured by the environment")
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return all(bool(libc.mallopt(parameter, value)) for parameter, value in (
        (M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold),
        (M_ARENA_MAX, arena_max or default_arena_max())))


def release_free_memory() -> bool:
    """Return the free pages of every malloc arena to the system; True if any were returned.

    Costs a walk of every arena plus the work of handing pages back (measured here: 2.7 ms
    with nothing to return, 124 ms to return 1.2 GiB of holes left by 8 threads), so it is
    called once per round or task, never per chunk.
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def python_heap_bytes() -> int | None:
    """Bytes held by Python allocations now, if tracemalloc is tracing (else None)."""
    if not tracemalloc.is_tracing():
        return None
    current, _peak = tracemalloc.get_traced_memory()
    return current


def process_rss_bytes(pid: int | None = None) -> int | None:
    """Resident memory of a process (this one by default) now, or None if it is gone or cannot be read.

    For a swarm's bytes per idle client and its workers' share (client/swarm.py). Read from
    ``/proc`` where there is one (no dependency: psutil is a development extra), else from
    psutil if it is installed.
    """
    try:
        with open(f"/proc/{pid if pid is not None else 'self'}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
        return None  # a process that exited but was not reaped yet has no VmRSS
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None
