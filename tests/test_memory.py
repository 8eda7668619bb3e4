"""fedtier.memory: freed heap really goes back to the system, and the Python heap is reported."""
from __future__ import annotations

import json
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
