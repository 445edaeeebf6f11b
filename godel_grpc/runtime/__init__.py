"""Where spawned agents run: the runtime interface and its local-process implementation."""

from godel_grpc.runtime.base import AgentHandle, AgentLaunch, ProcessView, Runtime, SpawnFailed

__all__ = ["AgentHandle", "AgentLaunch", "ProcessView", "Runtime", "SpawnFailed"]
