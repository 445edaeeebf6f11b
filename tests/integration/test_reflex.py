"""Reflex agents end to end: real agent processes learn from feedback and remember.

Scores are checked against the EWMA written out here by hand, not against the policy
module; memory is checked across a restart of both the agent process and the
coordinator process; the scheduler's preference is counted over real dispatches.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections import Counter
from pathlib import Path

import grpc
import pytest

from godel_grpc._proto.godel.v1 import agent_pb2, task_pb2
from godel_grpc.client import Client, RPCError, task_request
from godel_grpc.server import RunningServer
from tests.support import (
    PYTHON,
    AgentProcess,
    CoordinatorProcess,
    agent_processes,
    grpcurl_json,
    wait_for_agents,
)

pytestmark = pytest.mark.integration

Task = task_pb2.Task
Agent = agent_pb2.Agent
REMEMBER = ("--handler", "tests.agents.handlers:remember")


def reflex(memory: str = "persistent", rate: float = 0.1) -> tuple[str, str]:
    config = {"enabled": True, "memory": memory, "feedbackLoop": True, "adaptationRate": rate}
    return ("--reflex", json.dumps(config))


async def agent_named(client: Client, name: str) -> Agent:
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        for agent in await client.agents.list():
            if agent.name == name and agent.state == Agent.STATE_READY:
                return agent
        assert asyncio.get_running_loop().time() < deadline, f"{name} did not connect"
        await asyncio.sleep(0.05)


async def run(client: Client, role: str, **payload: object) -> Task:
    task = await client.tasks.run(role=role, payload=payload, wait_timeout=30)
    assert task.state == Task.STATE_SUCCEEDED, task
    return task


def ewma(ratings: list[float], rate: float) -> float:
    """The score as the API promises it: the first rating, then (1-a)*s + a*r."""
    score = ratings[0]
    for rating in ratings[1:]:
        score = (1 - rate) * score + rate * rating
    return score


async def test_memory_survives_agent_and_coordinator_restarts(tmp_path: Path) -> None:
    coordinator = CoordinatorProcess(tmp_path / "data").start()
    agent: AgentProcess | None = None
    try:
        async with Client(coordinator.address, timeout=10.0) as client:
            # Given an agent with persistent memory that ran three tasks
            agent = AgentProcess(coordinator.address, "learner", "--name", "learner-0",
                                 *REMEMBER, *reflex())  # fmt: skip
            first = await agent_named(client, "learner-0")
            for _ in range(2):
                await run(client, "learner")
            last = await run(client, "learner", note="null input needs a guard")
            assert last.output["count"] == 3
            await client.agents.feedback(first.id, taskId=last.id, rating=4, comments="guard it")

            # And its writes are in the event log
            async def written() -> int:
                kinds = [
                    e.WhichOneof("payload") for e in await client.events.get_for_agent(first.id)
                ]
                return kinds.count("agent_memory_written")

            deadline = asyncio.get_running_loop().time() + 20
            while await written() < 4:
                assert asyncio.get_running_loop().time() < deadline, "memory never journalled"
                await asyncio.sleep(0.05)
        # When the agent process and the coordinator are both killed and started again
        agent.stop()
        port = coordinator.port
        coordinator.kill()
        coordinator = CoordinatorProcess(tmp_path / "data").start(port)
        agent = AgentProcess(coordinator.address, "learner", "--name", "learner-0",
                             *REMEMBER, *reflex())  # fmt: skip
        async with Client(coordinator.address, timeout=10.0) as client:
            again = await agent_named(client, "learner-0")
            # Then it is the same agent, and its memory is what it wrote
            assert again.id == first.id
            assert again.reflex.memory_keys == 2
            assert (again.reflex.score, again.reflex.lessons) == (4.0, ["guard it"])
            task = await run(client, "learner")
            assert task.output["count"] == 4
            assert task.output["memory"]["note"] == "null input needs a guard"
            assert task.output["lessons"] == ["guard it"]
        # And the same holds after a clean restart, which starts from a snapshot
        agent.stop()
        coordinator.terminate()
        coordinator = CoordinatorProcess(tmp_path / "data").start(port)
        agent = AgentProcess(coordinator.address, "learner", "--name", "learner-0",
                             *REMEMBER, *reflex())  # fmt: skip
        async with Client(coordinator.address, timeout=10.0) as client:
            again = await agent_named(client, "learner-0")
            assert again.id == first.id and again.reflex.score == 4.0
            assert (await run(client, "learner")).output["count"] == 5
    finally:
        if agent is not None:
            agent.stop()
        coordinator.stop()


async def test_session_memory_lives_only_as_long_as_the_link(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    with agent_processes(address, "brief", 1, *REMEMBER, *reflex("session")) as (agent,):
        await agent_named(client, "brief-0")
        assert (await run(client, "brief")).output["count"] == 1
        assert (await run(client, "brief")).output["count"] == 2
        agent.stop()
    with agent_processes(address, "brief", 1, *REMEMBER, *reflex("session")):
        await agent_named(client, "brief-0")
        assert (await run(client, "brief")).output["count"] == 1


async def test_score_follows_the_ewma_and_travels_with_assignments(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    with agent_processes(address, "critic", 1, *REMEMBER, *reflex(rate=0.3)) as (agent,):
        me = await agent_named(client, "critic-0")
        ratings = [4.5, 2.0, 5.0, 0.5, 3.25]
        comments = ["good", "", "missed edge case with null input", "too slow", "fine"]
        for count, (rating, comment) in enumerate(zip(ratings, comments, strict=True), 1):
            task = await run(client, "critic")
            # When the caller rates the task
            answer = await client.agents.feedback(
                me.id, {"taskId": task.id, "rating": rating, "comments": comment}
            )
            # Then the score is the EWMA of the ratings so far, exactly
            assert answer.score == pytest.approx(ewma(ratings[:count], 0.3), abs=1e-12)
            assert answer.feedback_count == count and answer.score_updated
        expected = ewma(ratings, 0.3)
        shown = await client.agents.get(me.id)
        assert shown.reflex.score == pytest.approx(expected, abs=1e-12)
        assert shown.reflex.feedback_count == 5 and shown.reflex.scored
        lessons = ["good", "missed edge case with null input", "too slow", "fine"]
        assert list(shown.reflex.lessons) == lessons
        # And the next assignment carries the score and the lessons to the handler
        task = await run(client, "critic")
        assert task.output["score"] == pytest.approx(expected)
        assert task.output["feedbackCount"] == 5
        assert task.output["lessons"] == lessons
        # And the agent was told about each rating on its link
        agent.log.wait_for(lambda line: "feedback received" in line and '"rating": 3.25' in line)


async def test_exec_agent_gets_score_and_lessons_in_its_task_json(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    # The command echoes its task JSON with the reflex variables of its environment
    script = (
        "import json, os, sys; task = json.load(sys.stdin); "
        "task['env'] = {k: os.environ.get(k) for k in "
        "('GODEL_SCORE', 'GODEL_FEEDBACK_COUNT', 'GODEL_LESSONS')}; print(json.dumps(task))"
    )
    show = f"{shlex.quote(PYTHON)} -c {shlex.quote(script)}"
    with agent_processes(address, "cli", 1, "--exec", show, *reflex(rate=0.5)):
        me = await agent_named(client, "cli-0")
        first = await run(client, "cli")
        assert "reflex" not in first.output  # nothing to say before any feedback
        await client.agents.feedback(me.id, taskId=first.id, rating=2, comments="add tests")
        await client.agents.feedback(me.id, taskId=first.id, rating=4, comments="name things")
        task = await run(client, "cli")
        assert task.output["reflex"] == {
            "score": 3.0,
            "feedbackCount": 2.0,
            "lessons": ["add tests", "name things"],
        }
        assert task.output["env"] == {
            "GODEL_SCORE": "3",
            "GODEL_FEEDBACK_COUNT": "2",
            "GODEL_LESSONS": "add tests\nname things",
        }


async def test_better_rated_agent_gets_most_work_and_the_other_still_some(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    args = ("--capacity", "200", "--handler", "tests.agents.handlers:echo", *reflex())
    with agent_processes(address, "pair", 2, *args):
        await wait_for_agents(client, 2, role="pair")
        ids = {a.name: a.id for a in await client.agents.list(role="pair")}
        # Given two equal agents, one rated 1 and one rated 5 over 10 tasks each
        ran: dict[str, list[Task]] = {agent_id: [] for agent_id in ids.values()}
        while min(len(tasks) for tasks in ran.values()) < 10:
            batch = await client.tasks.submit_many([task_request(role="pair") for _ in range(20)])
            for task in batch:
                done = await client.tasks.wait(task.id, timeout=30)
                ran[done.agent_id].append(done)
        for agent_id, tasks in ran.items():
            rating = 5.0 if agent_id == ids["pair-1"] else 1.0
            for task in tasks[:10]:
                await client.agents.feedback(agent_id, taskId=task.id, rating=rating)
        assert (await client.agents.get(ids["pair-0"])).reflex.score == 1.0
        assert (await client.agents.get(ids["pair-1"])).reflex.score == 5.0
        # When 100 more tasks arrive while both have room
        tasks = await client.tasks.submit_many([task_request(role="pair") for _ in range(100)])
        done = [await client.tasks.wait(t.id, timeout=30) for t in tasks]
        # Then at least 70% go to the better one, and the other still gets some
        counts = Counter(t.agent_id for t in done)
        assert counts[ids["pair-1"]] >= 70, counts
        assert counts[ids["pair-0"]] >= 1, counts


async def test_invalid_feedback_is_refused(server: RunningServer, client: Client) -> None:
    address = f"127.0.0.1:{server.port}"
    with agent_processes(address, "judged", 2, *REMEMBER, *reflex()):
        await wait_for_agents(client, 2, role="judged")
        ids = {a.name: a.id for a in await client.agents.list(role="judged")}
        task = await run(client, "judged")
        other = ids["judged-1"] if task.agent_id == ids["judged-0"] else ids["judged-0"]
        cases = [
            (task.agent_id, {"taskId": task.id, "rating": 7}, grpc.StatusCode.INVALID_ARGUMENT),
            (task.agent_id, {"taskId": "t-404", "rating": 4}, grpc.StatusCode.INVALID_ARGUMENT),
            (other, {"taskId": task.id, "rating": 4}, grpc.StatusCode.FAILED_PRECONDITION),
            ("ag-nobody", {"taskId": task.id, "rating": 4}, grpc.StatusCode.NOT_FOUND),
        ]
        for agent_id, body, code in cases:
            with pytest.raises(RPCError) as refused:
                await client.agents.feedback(agent_id, body)
            assert refused.value.code == code, (body, refused.value)
        # And none of it changed anything
        for agent_id in ids.values():
            assert (await client.agents.get(agent_id)).reflex.feedback_count == 0


async def test_seed_reflex_json_through_grpcurl(tmp_path: Path) -> None:
    coordinator = CoordinatorProcess(tmp_path / "data", "--agent-exec", "cat").start()
    try:
        # Given the seed's section 2 spawn, verbatim
        spawned = await grpcurl_json(
            coordinator.address,
            "godel.v1.AgentService/SpawnAgent",
            """{
              "role": "worker",
              "reflex": {
                "enabled": true,
                "memory": "persistent",
                "feedbackLoop": true,
                "adaptationRate": 0.1
              }
            }""",
        )
        agent_id = spawned["agent"]["id"]
        async with Client(coordinator.address, timeout=10.0) as client:
            await wait_for_agents(client, 1, role="worker")
            task = await run(client, "worker")
            # When the seed's feedback object is sent beside the agent's id
            body = {
                "agentId": agent_id,
                "taskId": task.id,
                "rating": 4.5,
                "comments": "Good but missed edge case with null input",
            }
            answer = await grpcurl_json(
                coordinator.address, "godel.v1.AgentService/SubmitFeedback", json.dumps(body)
            )
            # Then the first rating sets the score (grpcurl prints proto field names)
            assert answer == {"score": 4.5, "feedback_count": "1", "score_updated": True}
            shown = await grpcurl_json(
                coordinator.address, "godel.v1.AgentService/GetAgent", json.dumps({"id": agent_id})
            )
            assert shown["agent"]["reflex"]["lessons"] == [body["comments"]]
            assert shown["agent"]["reflex"]["config"]["memory"] == "persistent"
            # And the next task's JSON (echoed by `cat`) carries score and lesson
            echoed = await run(client, "worker")
            assert echoed.output["reflex"]["lessons"] == [body["comments"]]
    finally:
        coordinator.terminate()


async def test_replay_shows_score_and_memory_as_they_were(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    with agent_processes(address, "replayed", 1, *REMEMBER, *reflex(rate=0.5)):
        agent = await agent_named(client, "replayed-0")
        seen: list[tuple[int, float, dict[str, object]]] = []

        async def mark(score: float, memory: dict[str, object]) -> None:
            """Records what the API shows now against the agent's latest event id."""
            await server.coordinator.journal.flush()
            events = await client.events.get_for_agent(agent.id)
            seen.append((events[-1].id, score, memory))

        first = await run(client, "replayed")
        await mark(0.0, {"count": 1.0})
        await client.agents.feedback(agent.id, taskId=first.id, rating=4, comments="ok")
        await mark(4.0, {"count": 1.0})
        second = await run(client, "replayed", note="guard nulls")
        await mark(4.0, {"count": 2.0, "note": "guard nulls"})
        scored = await client.agents.feedback(agent.id, taskId=second.id, rating=2)
        assert scored.score == pytest.approx(3.0)  # 0.5 * 4 + 0.5 * 2
        await mark(3.0, {"count": 2.0, "note": "guard nulls"})

        for event_id, score, memory in seen:
            state = await client.agents.replay(agent.id, event_id)
            assert state.score == pytest.approx(score), event_id
            assert dict(state.memory.items()) == memory, event_id
        # Before its first memory write the agent remembered nothing.
        registered = (await client.events.get_for_agent(agent.id))[0]
        assert dict((await client.agents.replay(agent.id, registered.id)).memory.items()) == {}
