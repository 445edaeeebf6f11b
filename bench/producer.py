"""A producer process: submits tasks to the coordinator as fast as the coordinator takes them.

``python -m bench.producer --address HOST:PORT --count N --batch B --concurrency C``

Line protocol with the benchmark (JSON on stdout, plain lines on stdin), so that the
benchmark, not the producer, owns the clock and the start is simultaneous:

1. the producer builds every request, connects, submits a few warm-up tasks and prints
   ``{"ready": true}``;
2. it waits for a line on stdin, then submits `count` tasks with `concurrency` calls in
   flight: ``SubmitTask`` (one task per call) when B is 1, ``SubmitTasks`` with B tasks
   per call otherwise;
3. it prints ``{"submitted": N, "seconds": S, "cpu_seconds": C, "call_p50_ms": ...,
   "call_p99_ms": ...}`` and exits (C is its own CPU time while submitting, which the
   benchmark cannot read once the process is gone).

Requests are built before the start so that the figures do not include making protobuf
objects in Python, which is the producer's cost, not the coordinator's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import grpc

from bench.procs import emit
from godel_grpc._proto.godel.v1 import task_service_pb2 as task_pb
from godel_grpc._proto.godel.v1 import task_service_pb2_grpc as task_grpc

ROLE = "bench"
WARMUP_TASKS = 20


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def produce(address: str, count: int, batch: int, concurrency: int) -> None:
    """Runs the protocol described in the module docstring."""
    single = task_pb.SubmitTaskRequest(role=ROLE)
    if batch <= 1:
        calls: list[task_pb.SubmitTaskRequest | task_pb.SubmitTasksRequest] = [single] * count
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

        cpu_start = time.process_time()
        start = time.perf_counter()
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
    args = parser.parse_args()
    asyncio.run(produce(args.address, args.count, args.batch, args.concurrency))


if __name__ == "__main__":
    main()
