"""`client.sagas`: steps with compensations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import saga_pb2
from godel_grpc._proto.godel.v1 import saga_service_pb2 as saga_pb
from godel_grpc._proto.godel.v1 import saga_service_pb2_grpc as saga_grpc
from godel_grpc.client._errors import streamed, translated


class SagaHandle:
    """A created saga: its latest known state and the calls that act on it."""

    def __init__(self, sagas: Sagas, saga: saga_pb2.Saga) -> None:
        self._sagas = sagas
        self.saga = saga

    @property
    def id(self) -> str:
        return self.saga.id

    @property
    def steps(self) -> Sequence[saga_pb2.SagaStep]:
        """The steps, in execution order, as last seen."""
        return list(self.saga.steps)

    async def execute(
        self, input: Mapping[str, Any] | None = None, *, manual_compensation: bool = False
    ) -> saga_pb2.Saga:
        """Starts the saga and returns it RUNNING; `wait()` follows it to its end. With
        `manual_compensation`, a failed step waits (FAILED) for `compensate()`."""
        self.saga = await self._sagas.execute(
            self.id, input, manual_compensation=manual_compensation
        )
        return self.saga

    async def compensate(self, reason: str = "") -> saga_pb2.Saga:
        """Rolls the saga back: undoes its completed steps, last first."""
        self.saga = await self._sagas.compensate(self.id, reason)
        return self.saga

    async def get(self) -> saga_pb2.Saga:
        """Refreshes and returns the saga."""
        self.saga = await self._sagas.get(self.id)
        return self.saga

    async def wait(self, timeout: float | None = None) -> saga_pb2.Saga:
        """Waits until the saga comes to rest (nothing left running) and returns it."""
        async for saga in self._sagas.watch(self.id, timeout=timeout):
            self.saga = saga
        return self.saga

    async def delete(self) -> None:
        """Deletes the saga, stopping it without further compensation."""
        await self._sagas.delete(self.id)


class Sagas:
    """`client.sagas`: ordered steps over agents, undone in reverse when one fails."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = saga_grpc.SagaServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> SagaHandle:
        """Creates a saga from the seed's object (`name`, `steps` with `name`, `action`,
        `compensate`, the actions given by name), as a mapping or keyword arguments."""
        request = json_format.ParseDict({**(spec or {}), **fields}, saga_pb.CreateSagaRequest())
        response = await self._stub.CreateSaga(request, timeout=self._timeout)
        return SagaHandle(self, response.saga)

    def handle(self, saga: saga_pb2.Saga) -> SagaHandle:
        """A handle on a saga found with `get` or `list`."""
        return SagaHandle(self, saga)

    @translated
    async def execute(
        self,
        saga_id: str,
        input: Mapping[str, Any] | None = None,
        *,
        manual_compensation: bool = False,
    ) -> saga_pb2.Saga:
        request = saga_pb.ExecuteSagaRequest(id=saga_id, manual_compensation=manual_compensation)
        if input is not None:
            request.input.update(dict(input))
        response = await self._stub.ExecuteSaga(request, timeout=self._timeout)
        return response.saga

    @translated
    async def compensate(self, saga_id: str, reason: str = "") -> saga_pb2.Saga:
        response = await self._stub.CompensateSaga(
            saga_pb.CompensateSagaRequest(id=saga_id, reason=reason), timeout=self._timeout
        )
        return response.saga

    @translated
    async def get(self, saga_id: str) -> saga_pb2.Saga:
        response = await self._stub.GetSaga(
            saga_pb.GetSagaRequest(id=saga_id), timeout=self._timeout
        )
        return response.saga

    @translated
    async def list(
        self, page_size: int = 100, page_token: str = "", state: int = 0
    ) -> tuple[list[saga_pb2.Saga], str]:
        """A page of sagas, newest first, and the next page's token."""
        response = await self._stub.ListSagas(
            saga_pb.ListSagasRequest(page_size=page_size, page_token=page_token, state=state),  # type: ignore[arg-type]
            timeout=self._timeout,
        )
        return list(response.sagas), response.next_page_token

    @translated
    async def delete(self, saga_id: str) -> None:
        await self._stub.DeleteSaga(saga_pb.DeleteSagaRequest(id=saga_id), timeout=self._timeout)

    def watch(self, saga_id: str, timeout: float | None = None) -> AsyncIterator[saga_pb2.Saga]:
        """The saga now and after every change, until it comes to rest."""
        call = self._stub.WatchSaga(saga_pb.WatchSagaRequest(id=saga_id), timeout=timeout)
        return streamed(call, "saga")
