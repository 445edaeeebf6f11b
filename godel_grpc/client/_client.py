"""An async Python client in the shape of the seed's calls (`client.tasks.submit`)."""

from __future__ import annotations

from types import TracebackType

import grpc

from godel_grpc.auth.channel import open_channel
from godel_grpc.client._agents import Agents
from godel_grpc.client._bulkheads import Bulkheads
from godel_grpc.client._common import DEFAULT_TIMEOUT
from godel_grpc.client._convoys import Convoys
from godel_grpc.client._events import Events
from godel_grpc.client._queues import Queues
from godel_grpc.client._sagas import Sagas
from godel_grpc.client._swarms import Swarms
from godel_grpc.client._tasks import Tasks
from godel_grpc.client._workflows import Workflows


class Client:
    """Connects to a coordinator; use as `async with Client(address) as client`."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str = "",
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Opens a channel (lazily connected) to the coordinator.

        Args:
            address: ``host:port``.
            timeout: seconds each unary call may take.
            token: bearer token (`godel token create`) sent with every call.
            tls_ca: PEM CA file that signed the coordinator's certificate; any TLS
                argument makes the channel use TLS.
            tls_cert: PEM client certificate for a coordinator that requires mTLS.
            tls_key: PEM key of `tls_cert`.
            credentials: ready-made TLS credentials, instead of the files.
        """
        self.address = address
        self._channel = open_channel(
            address,
            token=token,
            credentials=credentials,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
        )
        self.tasks = Tasks(self._channel, timeout)
        self.agents = Agents(self._channel, timeout)
        self.events = Events(self._channel, timeout)
        self.convoys = Convoys(self._channel, timeout)
        self.sagas = Sagas(self._channel, timeout)
        self.queues = Queues(self._channel, timeout)
        self.bulkheads = Bulkheads(self._channel, timeout)
        self.workflows = Workflows(self._channel, timeout)
        self.swarms = Swarms(self._channel, timeout)

    async def close(self) -> None:
        """Closes the channel, and the stream `tasks.run` shares. Idempotent."""
        await self.tasks.close()
        await self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
