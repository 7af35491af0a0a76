"""Where workers connect: an abstract Unix socket on Linux (no path-length limit), accepted
only from a process of the server's own user."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from dagserve.engine.workers.endpoint import peer_is_own_user, worker_address

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sockets")


def test_the_address_is_abstract_and_short_whatever_the_directory():
    deep = Path("/tmp") / ("d" * 200)
    address = worker_address(deep, "9001")
    assert address.startswith("\0") and len(address.encode()) < 108


def _accepts_from(uid: int | None) -> bool:
    """Listen on a fresh abstract address, connect from this process (``uid`` None) or
    from a child running as ``uid``; what ``peer_is_own_user`` said of the peer."""
    async def go() -> bool:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                seen.set_result(peer_is_own_user(transport))
                transport.close()

        address = worker_address(Path("/unused"), "test")
        server = await asyncio.get_running_loop().create_unix_server(Probe, path=address)
        try:
            if uid is None:
                _, writer = await asyncio.open_unix_connection(address)
                writer.close()
            else:
                pid = os.fork()
                if pid == 0:  # the child: another user, connects, leaves
                    try:
                        os.setgid(uid)
                        os.setuid(uid)
                        with socket.socket(socket.AF_UNIX) as sock:
                            sock.connect(address)
                    finally:
                        os._exit(0)
                await asyncio.get_running_loop().run_in_executor(None, os.waitpid, pid, 0)
            return await asyncio.wait_for(seen, 30)
        finally:
            server.close()

    return asyncio.run(go())


def test_a_connection_from_our_own_user_is_accepted():
    assert _accepts_from(None) is True


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_a_connection_from_another_user_is_refused():
    assert _accepts_from(65534) is False
