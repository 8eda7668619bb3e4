"""A durable receive hands the disk its bytes as they arrive, so its final fsync is short."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import fedtier.transport.streams as streams
from fedtier.transport.streams import file_chunks, receive_to_file

MiB = 1 << 20


@pytest.mark.parametrize("durable", [True, False])
def test_writeback_starts_on_each_block_of_a_durable_receive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            durable: bool) -> None:
    source = tmp_path / "source"
    source.write_bytes(os.urandom(5 * MiB + 123))
    monkeypatch.setattr(streams, "WRITEBACK_BYTES", MiB)
    started: list[tuple[int, int, int]] = []
    real = streams.start_writeback

    def spy(fd: int, offset: int, length: int) -> bool:
        started.append((offset, length, os.fstat(fd).st_size))
        return real(fd, offset, length)

    monkeypatch.setattr(streams, "start_writeback", spy)
    received = receive_to_file(file_chunks(source, chunk_size=300_000), lambda header: tmp_path / "copy",
                               durable=durable)
    assert received.path.read_bytes() == source.read_bytes()
    if durable:  # contiguous ranges from 0, each at least a block and already written when started
        assert [offset for offset, _, _ in started] == [0] + [o + n for o, n, _ in started[:-1]]
        assert all(length >= MiB and size >= offset + length for offset, length, size in started)
        assert 5 * MiB + 123 - MiB < started[-1][0] + started[-1][1] <= 5 * MiB + 123  # the tail: the fsync's
    else:
        assert started == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_start_writeback_reaches_the_kernel(tmp_path: Path) -> None:
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * MiB)
        f.flush()
        assert streams.start_writeback(f.fileno(), 0, MiB) is True
    assert streams.start_writeback(-1, 0, MiB) is False  # a bad descriptor: refused, not raised
