"""The logger sidecar in process: its files, its filters, and its service on a real
gRPC server on loopback called through a real stub."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2, status_pb2

from godel_grpc._proto.godel.v1 import (
    log_record_pb2,
    logger_sidecar_service_pb2,
    logger_sidecar_service_pb2_grpc,
)
from godel_grpc.errors import DETAILS_METADATA_KEY
from sidecars._serving import SidecarServer
from sidecars.logger.book import LogBook
from sidecars.logger.filter import LevelFilter, TailFilter, severity
from sidecars.logger.records import decode, encode
from sidecars.logger.server import serve_logger
from sidecars.logger.writer import RotatingJsonLines

LogRecord = log_record_pb2.LogRecord
TailRequest = logger_sidecar_service_pb2.TailRequest
LEVELS = ("debug", "info", "warning", "error")


def line(n: int, size: int = 10) -> bytes:
    return json.dumps({"sequence": n, "message": "x" * size}).encode() + b"\n"


# The files.


def test_rotation_keeps_at_most_the_backups_and_never_splits_a_line(tmp_path: Path) -> None:
    files = RotatingJsonLines(tmp_path, max_bytes=100, backups=2)
    files.write([line(n) for n in range(1, 41)])
    files.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["agent.log", "agent.log.1", "agent.log.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 100
        assert path.read_bytes().endswith(b"\n")
    newest = [json.loads(raw)["sequence"] for raw in files.lines_newest_first()]
    assert newest[0] == 40
    assert newest == list(range(40, 40 - len(newest), -1))  # contiguous, oldest dropped


def test_zero_backups_truncates_instead_of_rotating(tmp_path: Path) -> None:
    files = RotatingJsonLines(tmp_path, max_bytes=60, backups=0)
    files.write([line(n) for n in range(1, 6)])
    files.close()
    assert [p.name for p in tmp_path.iterdir()] == ["agent.log"]


def test_a_line_bigger_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    files = RotatingJsonLines(tmp_path, max_bytes=50, backups=3)
    files.write([line(1), line(2, size=200), line(3)])
    files.close()
    assert [json.loads(r)["sequence"] for r in files.lines_newest_first()] == [3, 2, 1]
    assert len(files.files()) == 3


def test_reading_backwards_crosses_block_boundaries(tmp_path: Path) -> None:
    files = RotatingJsonLines(tmp_path, max_bytes=10 * 1024 * 1024, backups=1)
    files.write([line(n, size=300) for n in range(1, 1001)])  # ~330 KB, many blocks
    files.close()
    sequences = [json.loads(r)["sequence"] for r in files.lines_newest_first()]
    assert sequences == list(range(1000, 0, -1))


# Records and filters.


def test_a_record_round_trips_through_its_json_line() -> None:
    record = LogRecord(
        level="warning", message="disk at 91%", agent_id="a-1", task_id="t-1", source="stderr"
    )
    record.time.FromJsonString("2025-01-02T03:04:05.678Z")
    record.fields.update({"disk": "/", "used": 0.91, "retries": 3})
    record.sequence = 42
    encoded = encode(record)
    entry = json.loads(encoded)
    assert list(entry) == [
        "time",
        "level",
        "message",
        "agentId",
        "taskId",
        "source",
        "fields",
        "sequence",
    ]
    assert entry["time"] == "2025-01-02T03:04:05.678Z" and entry["sequence"] == 42
    assert entry["fields"] == {"disk": "/", "used": 0.91, "retries": 3}  # 3, not 3.0
    assert decode(encoded) == record


def test_lines_that_are_not_records_are_skipped() -> None:
    assert decode(b"not json") is None
    assert decode(b'{"sequence": "many"}') is None
    assert decode(b'{"time": "yesterday"}') is None


def test_levels_order_and_empty_means_info() -> None:
    assert [severity(level) for level in LEVELS] == [0, 1, 2, 3]
    assert severity("") == severity("info")
    assert LevelFilter("warning").keeps("error") and not LevelFilter("warning").keeps("info")
    with pytest.raises(KeyError):
        LevelFilter("verbose")
    wanted = TailFilter(min_level="info", task_id="t-1")
    assert wanted.matches(LogRecord(level="info", task_id="t-1"))
    assert not wanted.matches(LogRecord(level="debug", task_id="t-1"))
    assert not wanted.matches(LogRecord(level="error", task_id="t-2"))


# The service.


class Logger:
    """A logger sidecar served in this test's loop, with a stub to call it."""

    def __init__(self, book: LogBook, sidecar: SidecarServer, channel: grpc.aio.Channel) -> None:
        self.book = book
        self.sidecar = sidecar
        self.channel = channel
        self.stub = logger_sidecar_service_pb2_grpc.LoggerSidecarServiceStub(channel)

    async def ship(self, records: Iterable[LogRecord]) -> logger_sidecar_service_pb2.ShipResponse:
        return await self.stub.Ship(iter(list(records)))

    async def tail(self, **request: object) -> list[LogRecord]:
        return [r.record async for r in self.stub.Tail(TailRequest(**request))]  # type: ignore[arg-type]


async def start_logger(directory: Path, level: str = "info", **options: int) -> Logger:
    book = LogBook(RotatingJsonLines(directory, **options), level=level, agent_id="a-default")
    await book.start()
    sidecar = await serve_logger(book, "127.0.0.1:0")
    return Logger(book, sidecar, grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}"))


async def stop_logger(logger: Logger) -> None:
    await logger.channel.close()
    await logger.book.begin_close()
    await logger.sidecar.stop(0)
    await logger.book.close()


@pytest.fixture
async def logger(tmp_path: Path) -> AsyncIterator[Logger]:
    started = await start_logger(tmp_path / "logs")
    try:
        yield started
    finally:
        await stop_logger(started)


def records(tag: str, task_id: str = "t-1") -> list[LogRecord]:
    return [LogRecord(level=level, message=f"{tag} {level}", task_id=task_id) for level in LEVELS]


def file_lines(directory: Path) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in (directory / "agent.log").read_text().splitlines()]


async def test_ship_keeps_records_at_or_above_the_level(logger: Logger, tmp_path: Path) -> None:
    # Given a logger at info, when one record per level arrives
    answer = await logger.ship(records("one"))
    # Then debug is counted as filtered and the rest are on disk, in order, numbered
    assert (answer.received, answer.written, answer.filtered, answer.invalid) == (4, 3, 1, 0)
    lines = file_lines(tmp_path / "logs")
    assert [entry["message"] for entry in lines] == ["one info", "one warning", "one error"]
    assert [entry["sequence"] for entry in lines] == [1, 2, 3]
    assert {entry["agentId"] for entry in lines} == {"a-default"}  # stamped when missing
    assert all(str(entry["time"]).endswith("Z") for entry in lines)


async def test_malformed_records_are_counted_not_fatal(logger: Logger) -> None:
    # Given a stream with a bad level, an oversized task id and bytes that do not decode
    raw = logger.channel.stream_unary(
        "/godel.v1.LoggerSidecarService/Ship",
        request_serializer=lambda b: b,
        response_deserializer=logger_sidecar_service_pb2.ShipResponse.FromString,
    )
    good = LogRecord(level="error", message="kept").SerializeToString()
    stream = [
        LogRecord(level="verbose", message="bad level").SerializeToString(),
        LogRecord(task_id="t" * 200).SerializeToString(),
        b"\xff\xff\xff",
        good,
    ]
    # When it is shipped
    answer = await raw(iter(stream))
    # Then the stream went on and only the good record was written
    assert (answer.received, answer.written, answer.invalid) == (4, 1, 3)
    assert [r.message for r in await logger.tail(lines=10)] == ["kept"]


async def test_tail_returns_the_last_matching_records_oldest_first(logger: Logger) -> None:
    await logger.ship(records("a", "t-1") + records("b", "t-2") + records("c", "t-1"))
    last_two = await logger.tail(lines=2)
    assert [r.message for r in last_two] == ["c warning", "c error"]
    errors_of_t1 = await logger.tail(lines=10, min_level="error", task_id="t-1")
    assert [r.message for r in errors_of_t1] == ["a error", "c error"]
    assert [r.sequence for r in await logger.tail(lines=3)] == [7, 8, 9]
    assert await logger.tail(lines=0) == []


async def test_tail_follow_streams_each_new_record(logger: Logger) -> None:
    # Given a follower of task t-9's warnings, after the existing backlog
    await logger.ship(records("old", "t-9"))
    call = logger.stub.Tail(TailRequest(lines=1, follow=True, min_level="warning", task_id="t-9"))
    stream = aiter(call)
    first = await asyncio.wait_for(anext(stream), 5)
    assert first.record.message == "old error"
    # When new records are written, for this task and another
    await logger.ship(records("new", "t-8") + records("new", "t-9"))
    # Then the follower gets exactly this task's new warnings and errors
    got = [(await asyncio.wait_for(anext(stream), 5)).record.message for _ in range(2)]
    assert got == ["new warning", "new error"]
    call.cancel()


async def test_tail_rejects_out_of_range_requests(logger: Logger) -> None:
    for request in (
        {"lines": 10_001},
        {"lines": -1},
        {"min_level": "verbose"},
        {"task_id": "t" * 129},
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await logger.tail(**request)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = dict(failure.value.trailing_metadata() or ())[DETAILS_METADATA_KEY]
        status = status_pb2.Status.FromString(details)  # type: ignore[arg-type]
        bad_request = error_details_pb2.BadRequest()
        assert status.details[1].Unpack(bad_request)
        assert bad_request.field_violations[0].field in {"lines", "minLevel", "taskId"}


async def test_sequence_continues_after_a_restart(tmp_path: Path) -> None:
    first = await start_logger(tmp_path, level="debug")
    await first.ship(records("before"))
    await stop_logger(first)
    second = await start_logger(tmp_path, level="debug")
    try:
        await second.ship(records("after"))
        assert [r.sequence for r in await second.tail(lines=5)] == [4, 5, 6, 7, 8]
    finally:
        await stop_logger(second)


async def test_closing_ends_ship_with_unavailable_and_keeps_what_arrived(tmp_path: Path) -> None:
    # Given an open Ship stream that has sent one record, and a follower
    logger = await start_logger(tmp_path)
    call = logger.stub.Ship()
    await call.write(LogRecord(level="error", message="last words"))
    follower = logger.stub.Tail(TailRequest(lines=1, follow=True))
    follow_stream = aiter(follower)
    assert (await asyncio.wait_for(anext(follow_stream), 5)).record.message == "last words"
    # When the sidecar starts shutting down
    await logger.book.begin_close()
    # Then the stream ends with UNAVAILABLE, the follower too, and the record is on disk
    with pytest.raises(grpc.aio.AioRpcError) as shipped:
        await asyncio.wait_for(call, 5)
    assert shipped.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as followed:
        await asyncio.wait_for(anext(follow_stream), 5)
    assert followed.value.code() == grpc.StatusCode.UNAVAILABLE
    await stop_logger(logger)
    assert [entry["message"] for entry in file_lines(tmp_path)] == ["last words"]


async def test_health_and_reflection_are_served(logger: Logger) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(logger.channel)
    answer = await health.Check(
        health_pb2.HealthCheckRequest(service="godel.v1.LoggerSidecarService")
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
