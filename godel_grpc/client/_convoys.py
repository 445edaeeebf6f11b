"""`client.convoys`: dependency graphs of tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import convoy_pb2
from godel_grpc._proto.godel.v1 import convoy_service_pb2 as convoy_pb
from godel_grpc._proto.godel.v1 import convoy_service_pb2_grpc as convoy_grpc
from godel_grpc.client._errors import streamed, translated


class ConvoyHandle:
    """A created convoy: its latest known state and the calls that act on it."""

    def __init__(self, convoys: Convoys, convoy: convoy_pb2.Convoy) -> None:
        self._convoys = convoys
        self.convoy = convoy

    @property
    def id(self) -> str:
        return self.convoy.id

    @property
    def agents(self) -> Sequence[convoy_pb2.ConvoyNode]:
        """The nodes (the seed calls them agents)."""
        return list(self.convoy.agents)

    @property
    def dependencies(self) -> Sequence[convoy_pb2.ConvoyDependency]:
        """Every dependency edge (node, depends_on)."""
        return list(self.convoy.dependencies)

    async def start(self) -> convoy_pb2.Convoy:
        """Starts the convoy: nodes without dependencies are dispatched at once."""
        self.convoy = await self._convoys.start(self.id)
        return self.convoy

    async def get(self) -> convoy_pb2.Convoy:
        """Refreshes and returns the convoy."""
        self.convoy = await self._convoys.get(self.id)
        return self.convoy

    async def cancel(self, reason: str = "") -> convoy_pb2.Convoy:
        """Cancels every node that has not ended."""
        self.convoy = await self._convoys.cancel(self.id, reason)
        return self.convoy

    async def wait(self, timeout: float | None = None) -> convoy_pb2.Convoy:
        """Waits until the convoy ends and returns it."""
        async for convoy in self._convoys.watch(self.id, timeout=timeout):
            self.convoy = convoy
        return self.convoy


class Convoys:
    """`client.convoys`: dependency-ordered teams of agents."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = convoy_grpc.ConvoyServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> ConvoyHandle:
        """Creates a convoy from the seed's object (`name`, `pattern`, `agents` with
        `role`, `task`, `dependsOn`), given as a mapping or keyword arguments."""
        request = json_format.ParseDict({**(spec or {}), **fields}, convoy_pb.CreateConvoyRequest())
        response = await self._stub.CreateConvoy(request, timeout=self._timeout)
        return ConvoyHandle(self, response.convoy)

    @translated
    async def start(self, convoy_id: str) -> convoy_pb2.Convoy:
        response = await self._stub.StartConvoy(
            convoy_pb.StartConvoyRequest(id=convoy_id), timeout=self._timeout
        )
        return response.convoy

    @translated
    async def get(self, convoy_id: str) -> convoy_pb2.Convoy:
        response = await self._stub.GetConvoy(
            convoy_pb.GetConvoyRequest(id=convoy_id), timeout=self._timeout
        )
        return response.convoy

    @translated
    async def cancel(self, convoy_id: str, reason: str = "") -> convoy_pb2.Convoy:
        response = await self._stub.CancelConvoy(
            convoy_pb.CancelConvoyRequest(id=convoy_id, reason=reason), timeout=self._timeout
        )
        return response.convoy

    def watch(
        self, convoy_id: str, timeout: float | None = None
    ) -> AsyncIterator[convoy_pb2.Convoy]:
        """The convoy now and after every change, until it ends."""
        call = self._stub.WatchConvoy(convoy_pb.WatchConvoyRequest(id=convoy_id), timeout=timeout)
        return streamed(call, "convoy")
