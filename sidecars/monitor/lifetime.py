"""Noticing the moment the watched process exits, without polling.

On Linux a pidfd becomes readable when its process terminates (whether or not its
parent has reaped it yet), so the event loop can wait on it like on a socket. Where
pidfds do not exist, the monitor notices at its next sample instead.
"""

from __future__ import annotations

import asyncio
import os


async def wait_for_exit(pid: int) -> bool:
    """Returns True once `pid` has terminated.

    Returns False at once when this platform (or kernel) cannot wait for an arbitrary
    process; the caller must then detect the exit some other way.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return False
    try:
        fd = pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # an old kernel, or a sandbox that forbids the call
        return False
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not exited.done():
            exited.set_result(None)

    try:
        loop.add_reader(fd, on_readable)
        await exited
        return True
    finally:
        loop.remove_reader(fd)
        os.close(fd)
