"""Which queued task goes to which agent: pure policy, no I/O.

Every task targets exactly one pool (`role:NAME`, `action:NAME`, later queues,
partitions and swarms); every agent serves a set of pools and has a number of free
slots (its capacity minus its leases). `assign` leases ready tasks, highest priority
then oldest first, to agents with free slots, rotating among a pool's agents so work
spreads out. Agents with a reflex score are drawn by it instead (`patterns/reflex.py`:
better-scored agents are preferred, none is starved); a pool where no free agent has a
score rotates as before. Only pools that changed since the last call are visited, which keeps a
dispatch round proportional to what happened, not to the fleet's size.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from godel_grpc.patterns import reflex

GATHER_SECONDS = 0.002
"""How long a dispatch round waits for more work while the fleet is busy (see
`gather_delay`)."""
BUSY_RUNNING_PER_AGENT = 2
"""Tasks running per connected agent above which the fleet counts as busy."""


def gather_delay(running: int, agents: int) -> float:
    """Seconds the next dispatch round should wait before it leases.

    Zero while the fleet is lightly loaded: a lone task goes out at once. Once more than
    `BUSY_RUNNING_PER_AGENT` tasks per connected agent are running, `GATHER_SECONDS`:
    the tasks and freed slots of those 2 ms are leased together, several to a message
    per agent, and each agent answers them together. A streamed message costs grpc.aio
    tens of microseconds of CPU at each end (about 84 us on a 2-core machine), so under a
    flood of small tasks this keeps the agents and the coordinator from spending
    themselves on one message per task; it adds at most 2 ms before a task starts, and
    only while the fleet is busy.
    """
    return GATHER_SECONDS if running > BUSY_RUNNING_PER_AGENT * agents else 0.0


@dataclass(slots=True)
class _Pool:
    queue: list[tuple[int, int, str]] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    cursor: int = 0


class Scheduler:
    """Pools of queued tasks and the agents that serve them."""

    def __init__(self, uniform: Callable[[], float] | None = None) -> None:
        """`uniform` draws in [0, 1) for the score-weighted choice; seed it to replay."""
        self._uniform = uniform or random.Random().random
        self._scores: dict[str, float] = {}
        self._pools: dict[str, _Pool] = {}
        self._free: dict[str, int] = {}
        self._agent_pools: dict[str, tuple[str, ...]] = {}
        self._dirty: set[str] = set()
        self._sequence = itertools.count()

    def _pool(self, name: str) -> _Pool:
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = _Pool()
        return pool

    @property
    def has_work(self) -> bool:
        """Whether some pool changed since the last `assign`."""
        return bool(self._dirty)

    def enqueue(self, task_id: str, pool: str, priority_rank: int) -> None:
        """Adds a ready task; lower `priority_rank` goes first, then older tasks."""
        heapq.heappush(self._pool(pool).queue, (priority_rank, next(self._sequence), task_id))
        self._dirty.add(pool)

    def queued(self, pool: str) -> int:
        """Entries waiting in a pool (cancelled tasks leave until popped)."""
        found = self._pools.get(pool)
        return len(found.queue) if found else 0

    def add_agent(self, agent_id: str, pools: Iterable[str], free: int) -> None:
        """Registers an agent with `free` slots for the given pools (again, when its
        pools change: its score stays)."""
        score = self._scores.get(agent_id)
        self.remove_agent(agent_id)
        if score is not None:
            self._scores[agent_id] = score
        names = tuple(dict.fromkeys(pools))
        self._agent_pools[agent_id] = names
        self._free[agent_id] = max(0, free)
        for name in names:
            self._pool(name).agents.append(agent_id)
            self._dirty.add(name)

    def remove_agent(self, agent_id: str) -> None:
        """Stops leasing to an agent (disconnected or draining)."""
        for name in self._agent_pools.pop(agent_id, ()):
            pool = self._pools[name]
            pool.agents.remove(agent_id)
            if pool.cursor >= len(pool.agents):
                pool.cursor = 0
        self._free.pop(agent_id, None)
        # A departed agent's score would keep every pool on the slower scored path.
        self._scores.pop(agent_id, None)

    def set_score(self, agent_id: str, score: float | None) -> None:
        """Sets the reflex score an agent is preferred by; None schedules it as before."""
        if score is None:
            self._scores.pop(agent_id, None)
        else:
            self._scores[agent_id] = score

    def free_slots(self, agent_id: str) -> int:
        """Free slots of an agent, 0 if unknown."""
        return self._free.get(agent_id, 0)

    def release(self, agent_id: str, slots: int = 1) -> None:
        """Gives an agent back `slots` slots (an attempt ended)."""
        if agent_id in self._free:
            self._free[agent_id] += slots
            self._dirty.update(self._agent_pools[agent_id])

    def assign(
        self,
        is_ready: Callable[[str], bool],
        may_take: Callable[[str], bool] | None = None,
    ) -> list[tuple[str, str]]:
        """Leases ready tasks to agents with free slots.

        Args:
            is_ready: whether a queued task id may still be leased (a cancelled task
                stays in its heap until it surfaces here and is dropped).
            may_take: asked last, just before an agent would get a task: whether it may
                take one now (its circuit breaker). It may have side effects (a trial
                slot), so it is asked only when the lease will happen if it says yes.

        Returns:
            (task id, agent id) pairs, in lease order.
        """
        leases: list[tuple[str, str]] = []
        dirty, self._dirty = self._dirty, set()
        for name in dirty:
            pool = self._pools.get(name)
            if pool is None:
                continue
            queue = pool.queue
            while queue:
                task_id = queue[0][2]
                if not is_ready(task_id):
                    heapq.heappop(queue)
                    continue
                agent_id = self._next_free_agent(pool, may_take)
                if agent_id is None:
                    break
                heapq.heappop(queue)
                self._free[agent_id] -= 1
                leases.append((task_id, agent_id))
        return leases

    def _next_free_agent(self, pool: _Pool, may_take: Callable[[str], bool] | None) -> str | None:
        if self._scores:
            free = [a for a in pool.agents if self._free[a] > 0]
            if any(a in self._scores for a in free):
                return self._draw(free, may_take)
        agents = pool.agents
        count = len(agents)
        for step in range(count):
            index = (pool.cursor + step) % count
            agent_id = agents[index]
            if self._free[agent_id] > 0 and (may_take is None or may_take(agent_id)):
                pool.cursor = (index + 1) % count
                return agent_id
        return None

    def _draw(self, free: list[str], may_take: Callable[[str], bool] | None) -> str | None:
        """Score-weighted choice among free agents, asking `may_take` of the one drawn
        only, and drawing again without it when it says no."""
        while free:
            candidates = [(a, self._scores.get(a)) for a in free]
            agent_id = reflex.choose(candidates, self._uniform)
            if may_take is None or may_take(agent_id):
                return agent_id
            free.remove(agent_id)
        return None

    def wake(self, agent_id: str) -> None:
        """Marks an agent's pools for the next round (its breaker lets trials through)."""
        self._dirty.update(self._agent_pools.get(agent_id, ()))
