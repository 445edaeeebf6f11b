"""The agent's log shipper against a real logger sidecar served on loopback: bounded
buffering, reconnecting, never waiting on a missing sidecar."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

from godel_grpc._proto.godel.v1 import (
    log_record_pb2,
    logger_sidecar_service_pb2,
    logger_sidecar_service_pb2_grpc,
)
from godel_grpc.agent import add_agent_arguments
from godel_grpc.agent._backoff import Backoff
from godel_grpc.agent._cli import build_agent, resolve_config
from godel_grpc.agent._log_shipper import LogShipper, ShippingHandler, ShippingReporter
from sidecars._serving import SidecarServer
from sidecars.logger.book import LogBook
from sidecars.logger.server import serve_logger
from sidecars.logger.writer import RotatingJsonLines

LogRecord = log_record_pb2.LogRecord


class Sidecar:
    """A logger sidecar in this loop (level debug), with a follower of its records."""

    def __init__(self, book: LogBook, server: SidecarServer) -> None:
        self.book = book
        self.server = server
        self.address = f"127.0.0.1:{server.port}"
        self._channel = grpc.aio.insecure_channel(self.address)
        stub = logger_sidecar_service_pb2_grpc.LoggerSidecarServiceStub(self._channel)
        self._follow = stub.Tail(logger_sidecar_service_pb2.TailRequest(lines=100, follow=True))
        self._stream = aiter(self._follow)

    async def next_messages(self, count: int) -> list[str]:
        return [
            (await asyncio.wait_for(anext(self._stream), 10)).record.message for _ in range(count)
        ]

    async def next_record(self) -> LogRecord:
        return (await asyncio.wait_for(anext(self._stream), 10)).record

    async def stop(self) -> None:
        self._follow.cancel()
        await self._channel.close()
        await self.book.begin_close()
        await self.server.stop(0)
        await self.book.close()


async def start_sidecar(directory: Path, listen: str = "127.0.0.1:0") -> Sidecar:
    book = LogBook(RotatingJsonLines(directory), level="debug")
    await book.start()
    return Sidecar(book, await serve_logger(book, listen))


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    started = await start_sidecar(tmp_path)
    try:
        yield started
    finally:
        await started.stop()


def unused_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def test_records_reach_the_sidecar_in_order_with_the_agents_id(sidecar: Sidecar) -> None:
    shipper = LogShipper(sidecar.address, agent_id=lambda: "a-7")
    shipper.start()
    try:
        for n in range(3):
            shipper.ship("warning", f"line {n}", task_id="t-1", source="task", fields={"n": n})
        assert await sidecar.next_messages(3) == ["line 0", "line 1", "line 2"]
    finally:
        await shipper.close()
    assert (shipper.shipped, shipper.dropped) == (3, 0)


async def test_a_full_buffer_drops_the_oldest_and_says_so(sidecar: Sidecar) -> None:
    # Given a three-record buffer that gets five lines before it can ship any
    shipper = LogShipper(sidecar.address, buffer=3)
    for n in range(5):
        shipper.ship("info", f"line {n}")
    assert (shipper.pending, shipper.dropped) == (3, 2)
    # When it connects
    shipper.start()
    try:
        report = await sidecar.next_record()
        kept = await sidecar.next_messages(3)
    finally:
        await shipper.close()
    # Then the sidecar hears how many were dropped, then gets the newest lines
    assert report.level == "warning" and "dropped 2 log records" in report.message
    assert report.fields["dropped"] == 2
    assert kept == ["line 2", "line 3", "line 4"]


async def test_a_missing_sidecar_never_holds_the_agent_up() -> None:
    # Given a shipper whose sidecar does not exist
    shipper = LogShipper(unused_address(), buffer=100, backoff=Backoff(0.05, 0.2))
    shipper.start()
    # When lines keep coming
    started = time.perf_counter()
    for n in range(1000):
        shipper.ship("info", f"line {n}")
    queued = time.perf_counter() - started
    # Then queueing is immediate, bounded, and closing gives up quickly and counts the rest
    assert queued < 1.0
    assert shipper.pending == 100 and shipper.dropped == 900
    started = time.perf_counter()
    await shipper.close(timeout=1.0)
    assert time.perf_counter() - started < 2.0
    assert shipper.dropped == 1000 and not shipper.connected


async def test_it_reconnects_when_the_sidecar_comes_back(tmp_path: Path) -> None:
    # Given a shipper connected to a sidecar
    first = await start_sidecar(tmp_path)
    shipper = LogShipper(first.address, backoff=Backoff(0.05, 0.2))
    shipper.start()
    try:
        shipper.ship("info", "before")
        assert await first.next_messages(1) == ["before"]
        # When the sidecar goes away, lines are written, and it comes back on its port
        await first.stop()
        await asyncio.wait_for(shipper.wait_connected(False), 10)
        shipper.ship("info", "while away")
        second = await start_sidecar(tmp_path, first.address)
        try:
            # Then the buffered line arrives, after what the first one had stored
            assert await second.next_messages(2) == ["before", "while away"]
        finally:
            await shipper.close()
            await second.stop()
    finally:
        await shipper.close()
    assert shipper.dropped == 0


def test_the_handler_ships_the_agents_own_records_but_not_task_lines() -> None:
    shipper = LogShipper("127.0.0.1:1")
    handler = ShippingHandler(shipper)
    logger = logging.getLogger("godel_grpc.agent.test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("too low")
        logger.info("connected", extra={"agent_id": "a-1", "task_id": "t-1", "resumed": True})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("it failed")
        logging.getLogger("godel_grpc.agent.task").addHandler(handler)
        logging.getLogger("godel_grpc.agent.task").warning("shipped by the reporter instead")
    finally:
        logger.removeHandler(handler)
        logging.getLogger("godel_grpc.agent.task").removeHandler(handler)
    shipped = list(shipper._buffer)
    assert [r.message for r in shipped] == ["connected", "it failed"]
    connected, failed = shipped
    assert (connected.level, connected.task_id, connected.source) == (
        "info",
        "t-1",
        "godel_grpc.agent.test",
    )
    assert connected.fields["agent_id"] == "a-1" and connected.fields["resumed"] is True
    assert failed.level == "error" and "RuntimeError: boom" in failed.fields["exception"]


def test_the_reporter_passes_everything_on_and_ships_a_copy() -> None:
    class Inner:
        def __init__(self) -> None:
            self.calls: list[tuple[object, ...]] = []

        def report_progress(self, *args: object) -> None:
            self.calls.append(("progress", *args))

        def report_log(self, *args: object) -> None:
            self.calls.append(("log", *args))

    inner = Inner()
    shipper = LogShipper("127.0.0.1:1")
    reporter = ShippingReporter(inner, shipper, source="stderr", attempt_id="at-1")
    reporter.report_progress("t-1", "at-1", 0.5, "half")
    reporter.report_log("t-1", "error", "compiler says no")
    assert inner.calls == [
        ("progress", "t-1", "at-1", 0.5, "half"),
        ("log", "t-1", "error", "compiler says no"),
    ]
    (copy,) = shipper._buffer
    assert (copy.level, copy.message, copy.task_id, copy.source) == (
        "error",
        "compiler says no",
        "t-1",
        "stderr",
    )
    assert copy.fields["attemptId"] == "at-1"


def test_godel_agent_takes_the_logger_from_a_flag_or_the_environment() -> None:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    base = ["--role", "r", "--exec", "cat"]
    from_flag = resolve_config(parser.parse_args([*base, "--logger", "127.0.0.1:7001"]), {})
    from_env = resolve_config(parser.parse_args(base), {"GODEL_LOGGER": "127.0.0.1:7002"})
    assert (from_flag.logger, from_env.logger) == ("127.0.0.1:7001", "127.0.0.1:7002")
    shipper = build_agent(from_flag).log_shipper
    assert shipper is not None and shipper.address == "127.0.0.1:7001"
    without = build_agent(resolve_config(parser.parse_args(base), {}))
    assert without.log_shipper is None and without.logs_dropped == 0
