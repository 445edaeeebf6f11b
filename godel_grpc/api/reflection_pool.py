"""A descriptor pool for server reflection that also resolves method symbols.

grpcurl's `describe pkg.Service.Method` asks reflection for the file containing a
method symbol; the C-backed default pool only resolves services, messages, enums and
fields. This wrapper falls back to the method's service, which lives in the same file.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor


class MethodAwarePool:
    """Delegates to a DescriptorPool, adding `Service.Method` lookups."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            if not service:
                raise
            found = self._pool.FindServiceByName(service)
            if method not in found.methods_by_name:
                raise
            return found.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)
