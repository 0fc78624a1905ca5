"""The shared JSONL writer: rotation, following the path, failures reported once, the queue."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from elaria.resilience import ManualClock
from elaria.telemetry.writer import REOPEN_CHECK_S, RETRY_AFTER_S, JsonlFile, LineWriter


def _line(i: int, size: int = 0) -> bytes:
    return (json.dumps({"i": i, "pad": "x" * size}) + "\n").encode()


def test_rotation_keeps_the_configured_number_of_files(tmp_path: Path) -> None:
    sink = JsonlFile(tmp_path / "a.jsonl", max_bytes=1000, keep=3)
    for i in range(60):
        assert sink.write(_line(i, 100))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.jsonl", "a.jsonl.1", "a.jsonl.2", "a.jsonl.3"]
    seen = []
    for name in ["a.jsonl.3", "a.jsonl.2", "a.jsonl.1", "a.jsonl"]:
        path = tmp_path / name
        assert path.stat().st_size <= 1000
        seen += [json.loads(line)["i"] for line in path.read_text().splitlines()]
    assert seen == sorted(seen)  # oldest file first, nothing reordered
    assert seen[-1] == 59
    assert sink.rotations > 3
    sink.close()


def test_files_are_private_to_their_owner(tmp_path: Path) -> None:
    sink = JsonlFile(tmp_path / "p.jsonl")
    sink.write(_line(1))
    assert (tmp_path / "p.jsonl").stat().st_mode & 0o077 == 0
    sink.close()


def test_a_removed_directory_is_recreated_and_writing_goes_on(tmp_path: Path) -> None:
    clock = ManualClock()
    log_dir = tmp_path / "logs"
    sink = JsonlFile(log_dir / "e.jsonl", clock=clock)
    sink.write(_line(1))
    shutil.rmtree(log_dir)
    clock.now += REOPEN_CHECK_S  # the next write checks that the path is still its file
    assert sink.write(_line(2))
    assert [json.loads(x)["i"] for x in (log_dir / "e.jsonl").read_text().splitlines()] == [2]
    sink.close()


def test_failure_is_reported_once_counted_and_recovers(tmp_path: Path) -> None:
    clock = ManualClock()
    reports: list[str] = []
    log_dir = tmp_path / "logs"
    sink = JsonlFile(log_dir / "e.jsonl", clock=clock, on_failure=reports.append)
    assert sink.write(_line(0))
    # The directory disappears and a regular file takes its name: nothing can be created there,
    # not even by root (for whom a read-only chmod would not stop writes).
    shutil.rmtree(log_dir)
    log_dir.write_text("in the way")
    clock.now += REOPEN_CHECK_S
    results = [sink.write(_line(i)) for i in range(1, 51)]
    assert results == [False] * 50
    assert len(reports) == 1
    assert "cannot write" in reports[0]
    assert sink.failed_writes == 1  # later records wait for the retry time instead of failing
    assert sink.lines_dropped == 50
    assert sink.stats()["failing"] is True
    # The disk heals; the next write after the retry delay goes through and says so once.
    log_dir.unlink()
    clock.now += RETRY_AFTER_S
    assert sink.write(_line(99))
    assert len(reports) == 2
    assert "works again" in reports[1]
    assert [json.loads(x)["i"] for x in (log_dir / "e.jsonl").read_text().splitlines()] == [99]
    sink.close()


def test_a_symlink_at_the_file_name_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("")
    (tmp_path / "logs").mkdir()
    os.symlink(target, tmp_path / "logs" / "e.jsonl")
    reports: list[str] = []
    sink = JsonlFile(tmp_path / "logs" / "e.jsonl", on_failure=reports.append)
    assert not sink.write(_line(1))
    assert target.read_text() == ""
    assert len(reports) == 1
    sink.close()


def test_write_after_close_is_dropped(tmp_path: Path) -> None:
    sink = JsonlFile(tmp_path / "c.jsonl")
    sink.close()
    assert not sink.write(_line(1) + _line(2))
    assert sink.lines_dropped == 2


async def test_line_writer_flushes_everything_on_close(tmp_path: Path) -> None:
    writer = LineWriter(JsonlFile(tmp_path / "w.jsonl"), queue_size=10_000)
    await writer.start()
    for i in range(1000):
        assert writer.submit(_line(i))
    await writer.aclose()
    lines = (tmp_path / "w.jsonl").read_text().splitlines()
    assert [json.loads(x)["i"] for x in lines] == list(range(1000))
    assert writer.stats()["dropped"] == 0
    assert writer.stats()["status"] == "ok"


async def test_line_writer_drops_and_counts_when_full_or_not_running(tmp_path: Path) -> None:
    writer = LineWriter(JsonlFile(tmp_path / "w.jsonl"), queue_size=5)
    assert not writer.submit(_line(0))  # not started
    await writer.start()
    # No await between submits: the writer task cannot drain, so the bounded queue fills.
    accepted = [writer.submit(_line(i)) for i in range(20)]
    assert accepted.count(True) == 5
    await writer.aclose()
    assert not writer.submit(_line(99))  # closed
    stats = writer.stats()
    assert stats["dropped_queue_full"] == 15
    assert stats["dropped_not_running"] == 2
    assert stats["dropped"] == 17
    assert stats["status"] == "degraded"
    assert stats["reasons"] == ["15 line(s) dropped: queue full"]
    assert len((tmp_path / "w.jsonl").read_text().splitlines()) == 5


async def test_a_failing_secondary_store_is_reported_once_and_the_file_still_written(
    tmp_path: Path,
) -> None:
    reports: list[str] = []
    loop = asyncio.get_running_loop()
    batch_done = asyncio.Event()

    def broken(lines: list[bytes]) -> None:
        loop.call_soon_threadsafe(batch_done.set)
        raise RuntimeError("database is locked")

    writer = LineWriter(
        JsonlFile(tmp_path / "w.jsonl"), queue_size=100, on_batch=broken, on_failure=reports.append
    )
    await writer.start()
    for i in range(3):  # three separate batches, each failing in the secondary store
        batch_done.clear()
        writer.submit(_line(i))
        async with asyncio.timeout(10):
            await batch_done.wait()
    await writer.aclose()
    assert len((tmp_path / "w.jsonl").read_text().splitlines()) == 3
    assert writer.batch_failures == 3
    assert len(reports) == 1
    assert "database is locked" in reports[0]


async def test_cancelled_close_still_closes_the_file(tmp_path: Path) -> None:
    writer = LineWriter(JsonlFile(tmp_path / "w.jsonl"), queue_size=100)
    await writer.start()
    writer.submit(_line(1))
    closing = asyncio.create_task(writer.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert not writer.running
    assert not writer.submit(_line(2))


async def test_lines_submitted_while_the_writer_waits_go_out_as_one_batch(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    batches: list[int] = []
    written = asyncio.Event()

    def count(lines: list[bytes]) -> None:
        batches.append(len(lines))
        loop.call_soon_threadsafe(written.set)

    writer = LineWriter(JsonlFile(tmp_path / "w.jsonl"), queue_size=100, on_batch=count)
    await writer.start()
    for burst in range(3):  # the writer goes idle between bursts and must wake for each
        written.clear()
        for i in range(10):
            assert writer.submit(_line(burst * 10 + i))
            await asyncio.sleep(0)  # the writer runs between submits, lingering for more
        async with asyncio.timeout(10):
            await written.wait()
        assert writer.stats()["queued"] == 0
        await asyncio.sleep(0.1)  # the writer is idle, waiting for the next line
    await writer.aclose()
    assert batches == [10, 10, 10]
    lines = (tmp_path / "w.jsonl").read_text().splitlines()
    assert [json.loads(x)["i"] for x in lines] == list(range(30))
