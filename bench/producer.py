"""A producer process: submits tasks to the coordinator as fast as the coordinator takes them.

``python -m bench.producer --address HOST:PORT --count N --batch B --concurrency C``

Line protocol with the benchmark (JSON on stdout, plain lines on stdin), so that the
benchmark, not the producer, owns the clock and the start is simultaneous:

1. the producer builds every request, connects, submits a few warm-up tasks and prints
   ``{"ready": true}``;
2. it waits for a line on stdin, then submits `count` tasks with `concurrency` calls in
   flight: ``SubmitTask`` (one task per call) when B is 1, ``SubmitTasks`` with B tasks
   per call otherwise; with ``--stream``, `concurrency` ``SubmitTaskStream`` calls
   instead, each sending its share one task per message as fast as flow control lets it;
3. it prints ``{"submitted": N, "seconds": S, "cpu_seconds": C, "call_p50_ms": ...,
   "call_p99_ms": ...}`` and exits (C is its own CPU time while submitting, which the
   benchmark cannot read once the process is gone). For a stream, a "call" is one task
   from the moment the stream takes it to its answer.

Requests are built before the start so that the figures do not include making protobuf
objects in Python, which is the producer's cost, not the coordinator's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator

import grpc

from bench.procs import emit
from godel_grpc._proto.godel.v1 import task_service_pb2 as task_pb
from godel_grpc._proto.godel.v1 import task_service_pb2_grpc as task_grpc

ROLE = "bench"
WARMUP_TASKS = 20


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def produce(
    address: str, count: int, batch: int, concurrency: int, stream: bool = False
) -> None:
    """Runs the protocol described in the module docstring."""
    single = task_pb.SubmitTaskRequest(role=ROLE)
    # Only the requests this run sends: the stream's share of each call, or the calls.
    streamed: list[list[task_pb.SubmitTaskStreamRequest]] = []
    calls: list[task_pb.SubmitTaskRequest | task_pb.SubmitTasksRequest] = []
    if stream:
        shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
        streamed = [
            [task_pb.SubmitTaskStreamRequest(sequence=n, task=single) for n in range(1, share + 1)]
            for share in shares
        ]
    elif batch <= 1:
        calls = [single] * count
    else:
        calls = [
            task_pb.SubmitTasksRequest(requests=[single] * min(batch, count - start))
            for start in range(0, count, batch)
        ]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = task_grpc.TaskServiceStub(channel)
        for _ in range(WARMUP_TASKS):
            await stub.SubmitTask(single, timeout=30)
        emit({"ready": True})
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        pending = iter(calls)
        latencies: list[float] = []

        async def worker() -> None:
            for request in pending:
                started = time.perf_counter()
                if isinstance(request, task_pb.SubmitTaskRequest):
                    await stub.SubmitTask(request, timeout=60)
                else:
                    await stub.SubmitTasks(request, timeout=60)
                latencies.append(time.perf_counter() - started)

        async def stream_worker(requests: list[task_pb.SubmitTaskStreamRequest]) -> None:
            taken: dict[int, float] = {}

            def feed() -> Iterator[task_pb.SubmitTaskStreamRequest]:
                for request in requests:
                    taken[request.sequence] = time.perf_counter()
                    yield request

            async for reply in stub.SubmitTaskStream(feed(), timeout=120):
                now = time.perf_counter()
                for ack in reply.acks:
                    if ack.error_code:
                        raise RuntimeError(f"task {ack.sequence} refused: {ack.message}")
                    latencies.append(now - taken.pop(ack.sequence))

        cpu_start = time.process_time()
        start = time.perf_counter()
        if stream:
            await asyncio.gather(*(stream_worker(requests) for requests in streamed))
        else:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    emit(
        {
            "submitted": count,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "call_p50_ms": _quantile(latencies, 0.50) * 1e3,
            "call_p99_ms": _quantile(latencies, 0.99) * 1e3,
        }
    )


def main() -> None:
    """Parses the flags and runs the producer."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--stream", action="store_true", help="one task per message on SubmitTaskStream"
    )
    args = parser.parse_args()
    asyncio.run(produce(args.address, args.count, args.batch, args.concurrency, args.stream))


if __name__ == "__main__":
    main()
