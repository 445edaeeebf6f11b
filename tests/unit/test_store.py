"""The contract every `EventStore` backend must honour, run against each backend.

A new backend joins by adding a name to `BACKENDS` and a branch to `_make`. Tests that
only make sense for a durable backend skip the others via `durable`; a durable backend
must also open through the factory with the URL `store_url` gives (the SIGKILL test's
child process uses it). PostgreSQL runs against the machine's server, in a fresh
database per test (per store directory, for the model-based test's examples).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from godel_grpc.store.base import (
    ANY_VERSION,
    NO_STREAM,
    EventStore,
    NewEvent,
    StoreClosed,
    StoredEvent,
    WrongExpectedVersion,
)
from godel_grpc.store.factory import open_store
from godel_grpc.store.memory import InMemoryEventStore
from godel_grpc.store.postgres import PostgresEventStore
from godel_grpc.store.sqlite import SqliteEventStore
from tests.support import PostgresDatabases

BACKENDS = ["memory", "sqlite", "postgresql"]
DURABLE = {"sqlite", "postgresql"}
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

MakeStore = Callable[[pathlib.Path], EventStore]


def _make(backend: str, directory: pathlib.Path, databases: PostgresDatabases | None) -> EventStore:
    if backend == "memory":
        return InMemoryEventStore()
    if backend == "sqlite":
        return SqliteEventStore(directory / "events.db")
    if backend == "postgresql":
        assert databases is not None
        return PostgresEventStore(databases.url_for(directory))
    raise AssertionError(backend)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def databases(backend: str) -> Iterator[PostgresDatabases | None]:
    """For PostgreSQL, fresh databases dropped after the test; None for the others."""
    if backend != "postgresql":
        yield None
        return
    created = PostgresDatabases()
    try:
        yield created
    finally:
        created.drop_all()


@pytest.fixture
def make_store(backend: str, databases: PostgresDatabases | None) -> MakeStore:
    """A new, unopened store of the backend over the given directory."""
    return lambda directory: _make(backend, directory, databases)


@pytest.fixture
def store_url(backend: str, databases: PostgresDatabases | None, tmp_path: pathlib.Path) -> str:
    """The factory URL of the backend's store over `tmp_path`."""
    return databases.url_for(tmp_path) if databases is not None else f"{backend}://"


@pytest.fixture
def durable(backend: str) -> None:
    if backend not in DURABLE:
        pytest.skip(f"{backend} keeps nothing across instances")


@pytest.fixture
async def store(make_store: MakeStore, tmp_path: pathlib.Path) -> AsyncIterator[EventStore]:
    opened = make_store(tmp_path)
    await opened.open()
    yield opened
    await opened.close()


def ev(
    stream: str,
    data: bytes = b"x",
    *,
    type: str = "thing.happened",
    agent_id: str = "",
    expected: int = ANY_VERSION,
) -> NewEvent:
    return NewEvent(stream, type, data, agent_id, expected)


async def read_all(store: EventStore, **filters: Any) -> list[StoredEvent]:
    return await store.read(0, 1_000_000, **filters)


# --- positions and versions ---------------------------------------------------------------


async def test_positions_start_at_one_and_stream_versions_count_per_stream(
    store: EventStore,
) -> None:
    """Given an empty log, when one call appends to two streams and a second call to one,
    then positions run 1..4 in order and each stream numbers its own events from 1."""
    first = await store.append([ev("a", b"1"), ev("b", b"2"), ev("a", b"3")])
    second = await store.append([ev("b", b"4")])

    assert [(e.position, e.stream, e.stream_version) for e in first + second] == [
        (1, "a", 1),
        (2, "b", 1),
        (3, "a", 2),
        (4, "b", 2),
    ]
    assert [e.data for e in first + second] == [b"1", b"2", b"3", b"4"]
    assert first[0].recorded_at > 0
    assert await read_all(store) == first + second


async def test_empty_append_writes_nothing(store: EventStore) -> None:
    """Given an empty log, when an empty batch is appended, then nothing is stored."""
    assert await store.append([]) == []
    assert await store.last_position() == 0


async def test_concurrent_appends_get_gap_free_positions(store: EventStore) -> None:
    """Given 300 calls of 1-3 events over 7 streams in flight at once, when they all
    finish, then positions are exactly 1..N, each call's events are in order, each
    stream's versions are 1..k in position order, and reads return what appends did."""
    calls = [
        [ev(f"s{(i + j) % 7}", f"{i}/{j}".encode()) for j in range(i % 3 + 1)] for i in range(300)
    ]

    results = await asyncio.gather(*(store.append(call) for call in calls))

    stored = sorted((e for result in results for e in result), key=lambda e: e.position)
    assert [e.position for e in stored] == list(range(1, len(stored) + 1))
    for call, result in zip(calls, results, strict=True):
        assert [e.data for e in result] == [n.data for n in call]
        assert [e.position for e in result] == sorted(e.position for e in result)
    for stream in {e.stream for e in stored}:
        versions = [e.stream_version for e in stored if e.stream == stream]
        assert versions == list(range(1, len(versions) + 1))
    assert await read_all(store) == stored
    assert await store.last_position() == len(stored)


@pytest.mark.parametrize("count", [1, 63, 64, 65, 511, 512, 513, 1_300])
async def test_one_call_of_any_size_is_stored_whole_and_in_order(
    store: EventStore, count: int
) -> None:
    """Given one call of `count` events over 5 streams (sizes around where a backend may
    split its writes into several statements), when it is appended after 3 events, then
    every event is stored once, in order, with its own data, agent and version."""
    await store.append([ev("before", f"b{i}".encode(), type="thing.before") for i in range(3)])
    call = [ev(f"s{i % 5}", f"d{i}".encode(), agent_id=f"a{i % 3}") for i in range(count)]

    result = await store.append(call)

    stored = await read_all(store, types=["thing.happened"])
    assert stored == result
    assert [e.position for e in stored] == list(range(4, 4 + count))
    assert [(e.data, e.agent_id) for e in stored] == [(n.data, n.agent_id) for n in call]
    assert [e.stream_version for e in stored] == [i // 5 + 1 for i in range(count)]
    assert await store.last_position() == 3 + count


# --- expected versions ---------------------------------------------------------------------


async def test_expected_version_no_stream_exact_and_any(store: EventStore) -> None:
    """Given stream "s" does not exist, NO_STREAM succeeds once and then conflicts; an
    exact version succeeds only when current; ANY always succeeds."""
    await store.append([ev("s", expected=NO_STREAM)])
    with pytest.raises(WrongExpectedVersion) as conflict:
        await store.append([ev("s", expected=NO_STREAM)])
    assert (conflict.value.stream, conflict.value.expected, conflict.value.actual) == ("s", 0, 1)

    [second] = await store.append([ev("s", expected=1)])
    assert second.stream_version == 2
    with pytest.raises(WrongExpectedVersion):
        await store.append([ev("s", expected=1)])
    [third] = await store.append([ev("s", expected=ANY_VERSION)])
    assert third.stream_version == 3


async def test_expected_version_counts_earlier_events_of_the_same_call(store: EventStore) -> None:
    """Given a new stream, when one call appends NO_STREAM then expected 1 then 2 to it,
    then all three are stored: each check sees the call's earlier events."""
    stored = await store.append(
        [ev("s", expected=NO_STREAM), ev("s", expected=1), ev("s", expected=2)]
    )
    assert [e.stream_version for e in stored] == [1, 2, 3]


async def test_conflict_fails_the_whole_call_and_only_that_call(store: EventStore) -> None:
    """Given many calls in flight together, one of which has a good first event and a
    conflicting second one, when they complete, then the conflicting call raises and
    wrote nothing, and every other call succeeded with gap-free positions."""
    await store.append([ev("taken")])
    good = [[ev(f"g{i}", f"good{i}".encode())] for i in range(60)]
    bad = [ev("fresh", b"bad-first", expected=NO_STREAM), ev("taken", b"bad", expected=NO_STREAM)]
    calls: list[list[NewEvent]] = [*good[:30], bad, *good[30:]]

    results = await asyncio.gather(*(store.append(c) for c in calls), return_exceptions=True)

    error = results[30]
    assert isinstance(error, WrongExpectedVersion)
    assert (error.stream, error.expected, error.actual) == ("taken", NO_STREAM, 1)
    oks = [r for i, r in enumerate(results) if i != 30]
    assert all(isinstance(r, list) for r in oks)
    everything = await read_all(store)
    assert [e.position for e in everything] == list(range(1, 62))
    assert await read_all(store, stream="fresh") == []
    assert b"bad" not in {e.data for e in everything}
    # The failed call consumed no version: the stream is still new.
    [fresh] = await store.append([ev("fresh", expected=NO_STREAM)])
    assert fresh.stream_version == 1


# --- reads ---------------------------------------------------------------------------------


@pytest.fixture
async def filled(store: EventStore) -> list[StoredEvent]:
    """Ten events: streams a/b alternate, agents x/y/'' cycle, types t0/t1/t2 cycle."""
    return await store.append(
        [
            ev("ab"[i % 2], bytes([i]), type=f"t{i % 3}", agent_id=["x", "y", ""][i % 3])
            for i in range(10)
        ]
    )


async def test_read_filters(store: EventStore, filled: list[StoredEvent]) -> None:
    """Given ten mixed events, when reading with each filter, then exactly the matching
    events come back, oldest first."""

    def expect(**match: Any) -> list[StoredEvent]:
        return [e for e in filled if all(getattr(e, k) == v for k, v in match.items())]

    assert await read_all(store) == filled
    assert await read_all(store, stream="a") == expect(stream="a")
    assert await read_all(store, stream="nope") == []
    assert await read_all(store, agent_id="x") == expect(agent_id="x")
    assert await read_all(store, agent_id="") == expect(agent_id="")
    assert await read_all(store, types=["t1"]) == expect(type="t1")
    assert await read_all(store, types=["t0", "t2"]) == [e for e in filled if e.type != "t1"]
    assert await read_all(store, stream="b", agent_id="y", types=["t1"]) == expect(
        stream="b", agent_id="y", type="t1"
    )


async def test_read_window_and_limit(store: EventStore, filled: list[StoredEvent]) -> None:
    """Given ten events, `after` is exclusive, `up_to` inclusive, `limit` caps the count
    (0 returns nothing), and filters combine with the window."""
    assert await store.read(3) == filled[3:]
    assert await store.read(3, up_to=6) == filled[3:6]
    assert await store.read(3, 2) == filled[3:5]
    assert await store.read(0, 0) == []
    assert await store.read(10) == []
    assert await store.read(0, up_to=0) == []
    assert await store.read(2, 2, stream="a") == [e for e in filled if e.stream == "a"][1:3]
    assert await store.read(0, up_to=5, types=["t0"]) == [filled[0], filled[3]]


async def test_last_position(store: EventStore) -> None:
    """Given an empty log it is 0; after appends it is the newest position."""
    assert await store.last_position() == 0
    await store.append([ev("a"), ev("b")])
    assert await store.last_position() == 2


# --- snapshots -----------------------------------------------------------------------------


async def test_snapshots_save_load_replace(store: EventStore) -> None:
    """Given no snapshot, load returns None; a save is loaded back; a second save
    replaces the first; names are independent."""
    assert await store.load_snapshot("tasks") is None
    await store.save_snapshot("tasks", 5, b"\x00v1")
    assert await store.load_snapshot("tasks") == (5, b"\x00v1")
    await store.save_snapshot("tasks", 9, b"v2")
    await store.save_snapshot("agents", 3, b"a")
    assert await store.load_snapshot("tasks") == (9, b"v2")
    assert await store.load_snapshot("agents") == (3, b"a")


# --- waiting -------------------------------------------------------------------------------


async def test_wait_for_position_wakes_on_append(store: EventStore) -> None:
    """Given a waiter past the end of the log, when an event is appended, then the waiter
    returns the new last position."""
    await store.append([ev("a")])
    waiter = asyncio.create_task(store.wait_for_position(1))
    await asyncio.sleep(0)  # let it start waiting
    assert not waiter.done()

    await store.append([ev("a"), ev("b")])

    assert await asyncio.wait_for(waiter, 5) == 3


async def test_wait_for_position_returns_at_once_when_already_past(store: EventStore) -> None:
    """Given events up to 2, waiting for more than 1 returns 2 without blocking."""
    await store.append([ev("a"), ev("a")])
    assert await asyncio.wait_for(store.wait_for_position(1), 5) == 2


async def test_wait_for_position_honours_timeout(store: EventStore) -> None:
    """Given nothing is appended, the wait ends after the timeout with the last position."""
    await store.append([ev("a")])
    assert await store.wait_for_position(1, timeout=0.05) == 1


# --- lifecycle -----------------------------------------------------------------------------


async def test_close_is_idempotent_and_refuses_appends(
    make_store: MakeStore, tmp_path: pathlib.Path
) -> None:
    """Given an open store, when it is closed twice, then appends and snapshot saves
    raise StoreClosed and waiters return at once."""
    store = make_store(tmp_path)
    await store.open()
    await store.append([ev("a")])
    waiter = asyncio.create_task(store.wait_for_position(1))
    await asyncio.sleep(0)

    await asyncio.gather(store.close(), store.close())
    await store.close()

    assert await asyncio.wait_for(waiter, 5) == 1
    with pytest.raises(StoreClosed):
        await store.append([ev("a")])
    with pytest.raises(StoreClosed):
        await store.save_snapshot("x", 1, b"")
    assert await store.wait_for_position(5) == 1


async def test_close_finishes_pending_appends(
    make_store: MakeStore, tmp_path: pathlib.Path
) -> None:
    """Given 200 appends in flight, when the store closes meanwhile, then every one of
    them completes and is in the log after reopening (for durable backends)."""
    store = make_store(tmp_path)
    await store.open()
    appends = [asyncio.create_task(store.append([ev("a", str(i).encode())])) for i in range(200)]
    await asyncio.sleep(0)  # all queued

    await store.close()

    done = [await a for a in appends]
    assert sorted(e.position for [e] in done) == list(range(1, 201))


async def test_data_survives_reopen(
    make_store: MakeStore, tmp_path: pathlib.Path, durable: None
) -> None:
    """Given a closed store with events and a snapshot, when a new instance opens the same
    place, then it reads the same events, continues positions and versions, and loads
    the snapshot."""
    first = make_store(tmp_path)
    await first.open()
    written = await first.append([ev("s", b"1", agent_id="x"), ev("s", b"2"), ev("t", b"3")])
    await first.save_snapshot("tasks", 3, b"snap")
    await first.close()

    second = make_store(tmp_path)
    await second.open()
    try:
        assert await read_all(second) == written
        assert await second.last_position() == 3
        assert await second.load_snapshot("tasks") == (3, b"snap")
        [more] = await second.append([ev("s", b"4", expected=2)])
        assert (more.position, more.stream_version) == (4, 3)
    finally:
        await second.close()


def test_acknowledged_appends_survive_sigkill(
    store_url: str, durable: None, tmp_path: pathlib.Path
) -> None:
    """Given a child process appending in a loop (8 writers, some 5-event batches) and
    printing every acknowledged position, when it is SIGKILLed after 200 acks, then the
    reopened log holds every acknowledged event with its data, gap-free."""
    child = textwrap.dedent(
        """
        import asyncio, sys
        from godel_grpc.store.base import NewEvent
        from godel_grpc.store.factory import open_store
        import pathlib

        async def main():
            store = open_store(sys.argv[1], pathlib.Path(sys.argv[2]))
            await store.open()

            async def writer(w):
                for i in range(10**9):
                    size = 5 if w % 2 else 1
                    events = [NewEvent(f"s{w}", "t", f"{w}:{i}:{k}".encode()) for k in range(size)]
                    for e in await store.append(events):
                        print(e.position, e.data.decode(), flush=True)

            await asyncio.gather(*(writer(w) for w in range(8)))

        asyncio.run(main())
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", child, store_url, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    acked: dict[int, str] = {}
    try:
        for line in proc.stdout:
            position, data = line.split()
            acked[int(position)] = data
            if len(acked) >= 200:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        # Read on through the same buffered reader (communicate() would skip its buffer):
        # these are acks printed before the kill landed; the last piece may be cut short.
        rest = proc.stdout.read()
        errors = proc.stderr.read()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert len(acked) >= 200, errors
    for line in rest.split("\n")[:-1]:
        position, data = line.split()
        acked[int(position)] = data

    async def reread() -> list[StoredEvent]:
        store = open_store(store_url, tmp_path)
        await store.open()
        try:
            return await read_all(store)
        finally:
            await store.close()

    stored = asyncio.run(reread())
    by_position = {e.position: e.data.decode() for e in stored}
    assert {p: by_position.get(p) for p in acked} == acked
    assert sorted(by_position) == list(range(1, len(stored) + 1))


async def test_sqlite_version_cache_eviction_falls_back_to_disk(tmp_path: pathlib.Path) -> None:
    """Given a SQLite store that caches only two stream versions, when five streams are
    appended to in turn with exact expected versions, then every check still sees the
    right version (read back from disk for evicted streams)."""
    store = SqliteEventStore(tmp_path / "events.db", version_cache_size=2)
    await store.open()
    try:
        for round_ in range(3):
            for stream in ("a", "b", "c", "d", "e"):
                [stored] = await store.append([ev(stream, expected=round_)])
                assert stored.stream_version == round_ + 1
        with pytest.raises(WrongExpectedVersion) as conflict:
            await store.append([ev("a", expected=1)])
        assert conflict.value.actual == 3
    finally:
        await store.close()


async def test_write_is_durable_without_returning_events(store: EventStore) -> None:
    """Given events written with `write`, then they read back like appended ones."""
    await store.write([ev("w"), ev("w")])
    assert [(e.position, e.stream_version) for e in await read_all(store)] == [(1, 1), (2, 2)]


async def test_sqlite_trusts_a_new_stream_hint_but_never_duplicates(tmp_path: pathlib.Path) -> None:
    """Given a stream that exists, when an append wrongly claims it is new, then the
    append fails instead of writing a second version 1, and the store keeps working."""
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    try:
        await store.append([NewEvent("fresh", "t", b"1", new_stream=True)])
        with pytest.raises(Exception, match="UNIQUE"):
            await store.append([NewEvent("fresh", "t", b"2", new_stream=True)])
        [after] = await store.append([NewEvent("fresh", "t", b"3")])
        assert (after.position, after.stream_version) == (2, 2)
    finally:
        await store.close()


# --- model-based ---------------------------------------------------------------------------

EXACT = -100  # placeholder: "the version the model says is current"

event_specs = st.tuples(
    st.sampled_from(["s0", "s1", "s2"]),
    st.sampled_from([ANY_VERSION, ANY_VERSION, EXACT, EXACT, NO_STREAM, 1, 3]),
    st.sampled_from(["", "x", "y"]),
)
calls_strategy = st.lists(st.lists(event_specs, max_size=5), max_size=12)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(calls=calls_strategy)
def test_random_appends_match_a_list_model(
    make_store: MakeStore, tmp_path: pathlib.Path, calls: list[list[tuple[str, int, str]]]
) -> None:
    """Given random calls (random streams, batch sizes, agents and expected versions),
    when they are appended one by one, then each call succeeds or conflicts exactly as
    a plain list model predicts, and every read (whole, paged, per stream, per agent)
    equals the model."""

    async def run(directory: pathlib.Path) -> None:
        store = make_store(directory)
        await store.open()
        try:
            model: list[tuple[str, int, str, bytes, str]] = []
            for n, call in enumerate(calls):
                versions = {s: sum(1 for m in model if m[0] == s) for s in ("s0", "s1", "s2")}
                events, predicted, conflict = [], [], None
                for k, (stream, expected, agent) in enumerate(call):
                    current = versions[stream]
                    expected = current if expected == EXACT else expected
                    if conflict is None and expected not in (ANY_VERSION, current):
                        conflict = (stream, expected, current)
                    versions[stream] = current + 1
                    data = f"{n}.{k}".encode() + bytes([n % 256])
                    events.append(NewEvent(stream, f"t{k % 2}", data, agent, expected))
                    predicted.append((stream, current + 1, f"t{k % 2}", data, agent))
                if conflict is not None:
                    with pytest.raises(WrongExpectedVersion) as error:
                        await store.append(events)
                    got = (error.value.stream, error.value.expected, error.value.actual)
                    assert got == conflict
                    continue
                stored = await store.append(events)
                start = len(model)
                model.extend(predicted)
                assert [e.position for e in stored] == list(range(start + 1, len(model) + 1))

            expected_events = [
                (i + 1, stream, version, type_, data, agent)
                for i, (stream, version, type_, data, agent) in enumerate(model)
            ]

            def shape(events: list[StoredEvent]) -> list[tuple[Any, ...]]:
                return [
                    (e.position, e.stream, e.stream_version, e.type, e.data, e.agent_id)
                    for e in events
                ]

            assert shape(await read_all(store)) == expected_events
            assert await store.last_position() == len(model)
            paged: list[StoredEvent] = []
            while page := await store.read(paged[-1].position if paged else 0, 3):
                paged.extend(page)
            assert shape(paged) == expected_events
            for stream in ("s0", "s1"):
                assert shape(await read_all(store, stream=stream)) == [
                    e for e in expected_events if e[1] == stream
                ]
            assert shape(await read_all(store, agent_id="x", types=["t1"])) == [
                e for e in expected_events if e[5] == "x" and e[3] == "t1"
            ]
        finally:
            await store.close()

    with tempfile.TemporaryDirectory(dir=tmp_path) as directory:
        asyncio.run(run(pathlib.Path(directory)))


# --- factory -------------------------------------------------------------------------------


def test_open_store_parses_urls(tmp_path: pathlib.Path) -> None:
    """Given each supported URL form, the factory builds the matching backend at the
    matching place; PostgreSQL URLs (either spelling) pass through whole; unknown
    schemes fail clearly."""

    def sqlite_path(url: str) -> pathlib.Path:
        store = open_store(url, tmp_path)
        assert isinstance(store, SqliteEventStore)
        return store.path

    assert sqlite_path("") == tmp_path / "events.db"
    assert sqlite_path("sqlite://") == tmp_path / "events.db"
    assert sqlite_path("sqlite://sub/log.db") == tmp_path / "sub/log.db"
    assert sqlite_path("sqlite:///var/lib/godel/log.db") == pathlib.Path("/var/lib/godel/log.db")
    assert isinstance(open_store("memory://", tmp_path), InMemoryEventStore)
    for url in ("postgresql://user:secret@db:5433/godel?sslmode=require", "postgres://db/godel"):
        postgres = open_store(url, tmp_path)
        assert isinstance(postgres, PostgresEventStore)
        assert postgres.url == url
    with pytest.raises(ValueError, match="unknown"):
        open_store("redis://x", tmp_path)


# --- PostgreSQL only -----------------------------------------------------------------------


@pytest.fixture
def pg_databases() -> Iterator[PostgresDatabases]:
    created = PostgresDatabases()
    try:
        yield created
    finally:
        created.drop_all()


async def test_postgres_second_store_waits_for_the_lock(pg_databases: PostgresDatabases) -> None:
    """Given an open PostgreSQL store, when a second store opens on the same database,
    then it waits (holding no write access) until the first closes, and then continues
    the same log with gap-free positions and versions."""
    url = pg_databases.url_for()
    first = PostgresEventStore(url)
    await first.open()
    await first.append([ev("s"), ev("s")])
    second = PostgresEventStore(url)
    opening = asyncio.create_task(second.open())
    done, _ = await asyncio.wait({opening}, timeout=0.5)
    assert not done, "the second store opened while the first held the lock"
    await first.append([ev("s")])

    await first.close()
    await asyncio.wait_for(opening, 10)
    try:
        assert first.lock_key == second.lock_key
        assert await second.last_position() == 3
        [more] = await second.append([ev("s", expected=3)])
        assert (more.position, more.stream_version) == (4, 4)
    finally:
        await second.close()


async def test_postgres_trusts_a_new_stream_hint_but_never_duplicates(
    pg_databases: PostgresDatabases,
) -> None:
    """Given a stream that exists but is no longer in the version cache, when an append
    wrongly claims it is new, then the append fails on the unique index instead of
    writing a second version 1, and the store keeps working with gap-free positions."""
    store = PostgresEventStore(pg_databases.url_for(), version_cache_size=1)
    await store.open()
    try:
        await store.append([NewEvent("fresh", "t", b"1", new_stream=True)])
        await store.append([NewEvent("other", "t", b"2")])  # evicts "fresh"
        with pytest.raises(Exception, match=r"unique|duplicate"):
            await store.append([NewEvent("fresh", "t", b"3", new_stream=True)])
        [after] = await store.append([NewEvent("fresh", "t", b"4")])
        assert (after.position, after.stream_version) == (3, 2)
    finally:
        await store.close()


async def test_postgres_version_cache_eviction_falls_back_to_the_database(
    pg_databases: PostgresDatabases,
) -> None:
    """Given a store that caches only two stream versions, when five streams are
    appended to in turn with exact expected versions, then every check still sees the
    right version."""
    store = PostgresEventStore(pg_databases.url_for(), version_cache_size=2)
    await store.open()
    try:
        for round_ in range(3):
            for stream in ("a", "b", "c", "d", "e"):
                [stored] = await store.append([ev(stream, expected=round_)])
                assert stored.stream_version == round_ + 1
        with pytest.raises(WrongExpectedVersion) as conflict:
            await store.append([ev("a", expected=1)])
        assert conflict.value.actual == 3
    finally:
        await store.close()


async def test_postgres_store_stops_writing_once_its_lock_connection_is_gone(
    pg_databases: PostgresDatabases,
) -> None:
    """Given an open store whose writer session is ended by the server, then its failure
    future resolves without any append being tried, every later append fails, and a
    second store can take the lock and continue the log."""
    url = pg_databases.url_for()
    first = PostgresEventStore(url)
    await first.open()
    await first.append([ev("s")])
    failure = first.failure()
    assert failure is not None and not failure.done()
    admin = await asyncpg.connect(url)
    try:
        ended = await admin.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert ended
        reason = await asyncio.wait_for(failure, 10)
        assert "lock" in str(reason) or "connection" in str(reason)
        with pytest.raises(Exception, match="connection"):
            await first.append([ev("s")])

        second = PostgresEventStore(url)
        await asyncio.wait_for(second.open(), 10)
        try:
            [next_] = await second.append([ev("s", expected=1)])
            assert (next_.position, next_.stream_version) == (2, 2)
        finally:
            await second.close()
    finally:
        await admin.close()
        await first.close()
