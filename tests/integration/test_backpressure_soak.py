"""The backpressure acceptance run at a test-sized scale: 2,000 tasks per strategy
streamed into a queue of 400 drained by two slow agent processes (the issue's 50,000
into 10,000 runs in `make bench`, through the same code: `bench.backpressure`).

One coordinator process and one pair of agents serve all four strategies in turn, each
strategy with its own queue; every check of the acceptance list is made on each run
and reported as a problem, so a failure names the strategy and what broke.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.backpressure import AGENT_ROLE, STRATEGIES, Scenario, agent_args, run_scenario
from godel_grpc.client import Client
from tests.support import agent_processes, coordinator_process, wait_for_agents

pytestmark = pytest.mark.integration

SENT = 2_000
MAX_SIZE = 400
SLOW = {"BENCH_PAUSE_SECONDS": "0.01"}
"""2 agents x 2 slots x 10 ms: at most 400 tasks/s, well below the producer's pace."""


async def test_every_strategy_bounds_depth_keeps_hysteresis_and_accounts_for_every_task(
    tmp_path: Path,
) -> None:
    with (
        coordinator_process(tmp_path / "data") as coordinator,
        agent_processes(coordinator.address, AGENT_ROLE, 2, *agent_args(capacity=2), env=SLOW),
    ):
        async with Client(coordinator.address, timeout=30.0) as client:
            await wait_for_agents(client, 2, role=AGENT_ROLE)
            after = 0
            for strategy in STRATEGIES:
                # Given a queue of 400 and a producer streaming 2,000 tasks into it
                result = await run_scenario(client, Scenario(strategy, SENT, MAX_SIZE), after)
                after = result.last_event_id
                print(result.summary())
                # Then nothing of the acceptance list broke
                assert result.problems == [], result.summary()
                # And every task is completed, shed or rejected: the sum is what was sent
                assert result.accounted == result.total_sent, result.summary()
                assert result.max_depth == MAX_SIZE  # the queue did fill up
                if strategy == "block":
                    assert result.producer_waited and result.deadline_exceeded
                    assert result.counts.completed == SENT
