"""fedtier.memory: freed heap really goes back to the system, and the Python heap is reported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from fedtier.memory import python_heap_bytes

# A worker thread allocates 2,000 blocks of 100 KB (below glibc's mmap threshold, so they
# come from the thread's arena), then frees every other one: ~95 MiB of holes that malloc
# keeps, as a combiner's gRPC threads keep freed chunk buffers after a round.
FRAGMENTED_HEAP = textwrap.dedent("""
    import json, threading
    from fedtier.memory import release_free_memory

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    kept = []
    def work():
        blocks = [bytearray(100_000) for _ in range(2000)]
        for i in range(0, 2000, 2):
            blocks[i] = None
        kept.append(blocks)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    before = rss()
    released = release_free_memory()
    after = rss()
    print(json.dumps({"before": before, "after": after, "released": released,
                      "kept": sum(b is not None for b in kept[0])}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_release_free_memory_returns_the_holes_to_the_system() -> None:
    done = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["kept"] == 1000  # the live half is untouched
    assert figures["released"] is True
    freed_mib = (figures["before"] - figures["after"]) / (1 << 20)
    assert freed_mib > 60, figures  # ~95 MiB of holes; what is live (~95 MiB) stays


def test_python_heap_bytes_only_while_tracing() -> None:
    import tracemalloc

    assert not tracemalloc.is_tracing()
    assert python_heap_bytes() is None
    tracemalloc.start()
    try:
        before = python_heap_bytes()
        block = bytearray(5 << 20)
        after = python_heap_bytes()
        assert before is not None and after is not None and after - before >= 5 << 20
        del block
    finally:
        tracemalloc.stop()


# Eight threads malloc and free 200 KB blocks at the same time through ctypes (which lets go
# of the GIL), so glibc would give them arenas of their own; malloc_stats() lists the arenas.
CONCURRENT_THREADS = textwrap.dedent("""
    import ctypes, os, sys, threading
    from fedtier.memory import tune_allocator

    if sys.argv[1] == "tuned":
        assert tune_allocator(arena_max=2)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    start = threading.Barrier(8)

    def work():
        start.wait()
        for _ in range(20_000):
            libc.free(libc.malloc(200_000))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    libc.malloc_stats()  # to stderr: one "Arena N:" block per arena
""")


def _arenas(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CONCURRENT_THREADS, mode], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt and malloc_stats are glibc's (Linux)")
def test_tune_allocator_caps_the_arenas_concurrent_threads_get() -> None:
    """Each arena keeps its own free chunk buffers, so a combiner's peak grew with its
    concurrent uploads until the arenas were capped (fedtier/memory.py)."""
    assert _arenas("plain") > 2  # glibc's default: up to 8 per core
    assert _arenas("tuned") == 2
    # an operator's own setting wins: the cap is not applied over it
    env = {**os.environ, "MALLOC_ARENA_MAX": "3"}
    done = subprocess.run([sys.executable, "-c", "from fedtier.memory import tune_allocator; "
                           "print(tune_allocator())"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
