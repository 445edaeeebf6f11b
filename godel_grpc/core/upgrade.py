"""Reading recorded events of any schema version as the current version.

Events are never rewritten, so an event recorded by an older coordinator keeps the
`schema_version` it was written with. Every reader of the log (recovery, replay, the
event API) decodes through `decode`, which applies the upgrade steps from the event's
version up to `events.SCHEMA_VERSION` in order; the folds then only know the current
shape. A change to an event's meaning bumps `SCHEMA_VERSION` and adds one step here.
"""

from __future__ import annotations

from collections.abc import Callable

from godel_grpc._proto.godel.v1 import event_pb2
from godel_grpc.core.events import SCHEMA_VERSION
from godel_grpc.store.base import StoredEvent

Upgrade = Callable[[event_pb2.Event], None]


def _from_unversioned(event: event_pb2.Event) -> None:
    """Version 0: events recorded before events carried a version. Their payloads
    already have today's shape, so only the version is set."""


UPGRADES: dict[int, Upgrade] = {0: _from_unversioned}
"""Step from version N to N + 1, keyed by N: changes the event in place."""


class UnknownSchemaVersion(Exception):
    """An event was written by a newer coordinator than this one."""


def upgrade(event: event_pb2.Event, target: int = SCHEMA_VERSION) -> event_pb2.Event:
    """Brings `event` (in place) up to schema version `target` and returns it."""
    version = event.schema_version
    if version > target:
        raise UnknownSchemaVersion(
            f"event {event.id} has schema version {version}; this coordinator reads up to {target}"
        )
    while version < target:
        UPGRADES[version](event)
        version += 1
    event.schema_version = version
    return event


def decode(stored: StoredEvent) -> event_pb2.Event:
    """A recorded event as the current schema describes it, id and stream version
    filled in from the store."""
    event = event_pb2.Event.FromString(stored.data)
    event.id = stored.position
    event.stream_version = stored.stream_version
    event.type = stored.type
    return upgrade(event)
