"""The raw round-trip floor: a task's path with no coordinator in it.

A lone RunTask crosses three processes: the client calls the coordinator, the
coordinator sends the lease down an agent's open stream, the agent answers on it, the
coordinator commits the result and answers the call. This module does exactly that
with raw bytes and nothing else, so its round trip bounds from below what any
coordinator written with grpc.aio in Python can reach on this machine:

- ``python -m bench.raw_relay serve DIR`` is the relay. It holds a worker's stream
  (``Work``); each ``Run`` call (unary) or ``RunStream`` message goes down that stream,
  and the worker's echo is committed as one row to a SQLite file in ``DIR`` (WAL,
  ``synchronous=FULL``, one fsync) by one writer thread before the caller is answered.
  ``RunVolatile`` answers without the commit. It prints ``{"port": N}``.
- ``python -m bench.raw_relay work PORT`` is the worker: it echoes every message.
- `round_trips` runs in the benchmark process, one call at a time.

No protobuf, no validation, no state: the figures are the hops, the thread hand-off to
the writer and the fsync.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import pathlib
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from bench.procs import emit

SERVICE = "bench.Relay"
PAYLOAD = b"x" * 32
"""About the size of a small task (an id and a few flags)."""


class _Relay:
    """Forwards each call to the one worker stream and answers with its echo."""

    def __init__(self, directory: pathlib.Path) -> None:
        self._to_worker: asyncio.Queue[bytes] = asyncio.Queue()
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._db = sqlite3.connect(
            directory / "relay.db", isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY, data BLOB)")
        # One writer thread, as an event store has: the commit's fsync runs off the loop.
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def _commit(self, data: bytes) -> None:
        self._db.execute("BEGIN")
        self._db.execute("INSERT INTO results (data) VALUES (?)", (data,))
        self._db.execute("COMMIT")

    async def work(self, echoes: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """The worker's stream: calls go down it, echoes come back on it."""

        async def read_echoes() -> None:
            async for echo in echoes:
                self._waiting.pop(int.from_bytes(echo[:8], "little")).set_result(echo[8:])

        reader = asyncio.ensure_future(read_echoes())
        try:
            while True:
                yield await self._to_worker.get()
        finally:
            reader.cancel()

    async def _through_worker(self, request: bytes, durable: bool) -> bytes:
        call_id = next(self._ids)
        echo: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = echo
        self._to_worker.put_nowait(call_id.to_bytes(8, "little") + request)
        answer = await echo
        if durable:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._commit, answer)
        return answer

    async def run(self, request: bytes, context: Any) -> bytes:
        return await self._through_worker(request, durable=True)

    async def run_volatile(self, request: bytes, context: Any) -> bytes:
        return await self._through_worker(request, durable=False)

    async def run_stream(
        self, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield await self._through_worker(request, durable=True)


async def serve(directory: pathlib.Path) -> None:
    """Serves the relay on a free loopback port and prints ``{"port": N}``."""
    relay = _Relay(directory)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Work": grpc.stream_stream_rpc_method_handler(relay.work),
                    "Run": grpc.unary_unary_rpc_method_handler(relay.run),
                    "RunVolatile": grpc.unary_unary_rpc_method_handler(relay.run_volatile),
                    "RunStream": grpc.stream_stream_rpc_method_handler(relay.run_stream),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    emit({"port": port})
    await server.wait_for_termination()


async def work(port: int) -> None:
    """The worker: one stream to the relay, every message echoed back at once."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(f"/{SERVICE}/Work")()
        while isinstance(message := await call.read(), bytes):
            await call.write(message)


@dataclass(frozen=True)
class RelayTrips:
    """Seconds of sequential round trips through the relay, by kind."""

    durable: list[float]
    """Unary call, worker hop, one commit: a lone RunTask's path."""
    volatile: list[float]
    """Unary call and worker hop, no commit."""
    streamed: list[float]
    """As `durable`, the call a message on an open stream instead of a unary call."""


async def round_trips(address: str, samples: int, warmup: int) -> RelayTrips:
    """Times `samples` sequential round trips of each kind, after `warmup` of each."""
    async with grpc.aio.insecure_channel(address) as channel:
        run: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{SERVICE}/Run")
        run_volatile: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{SERVICE}/RunVolatile"
        )
        stream: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(
            f"/{SERVICE}/RunStream"
        )()

        async def on_stream(payload: bytes) -> bytes:
            await stream.write(payload)
            answer = await stream.read()
            if not isinstance(answer, bytes):
                raise RuntimeError("the relay ended the stream early")
            return answer

        found: list[list[float]] = []
        for call in (run, run_volatile, on_stream):
            times: list[float] = []
            for index in range(warmup + samples):
                start = time.perf_counter()
                if await call(PAYLOAD) != PAYLOAD:
                    raise RuntimeError("the relay answered with something else than the echo")
                if index >= warmup:
                    times.append(time.perf_counter() - start)
            found.append(times)
        await stream.done_writing()
    return RelayTrips(*found)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve(pathlib.Path(sys.argv[2])))
    elif sys.argv[1:2] == ["work"]:
        asyncio.run(work(int(sys.argv[2])))
    else:
        raise SystemExit("usage: python -m bench.raw_relay serve DIR | work PORT")
