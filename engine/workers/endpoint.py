"""Where a worker reaches the frontend: a Unix socket the frontend listens on until its
worker has connected.

On Linux the socket is abstract (its name starts with a NUL byte): no file, so no
"AF_UNIX path too long" however deep the temporary directory is (a path must fit in 108
bytes; CI and container TMPDIRs often do not leave room). An abstract socket has no file
mode to keep other users out, so the frontend accepts a connection only from a process of
its own user (``SO_PEERCRED``), and only the first one. Elsewhere the socket is a file in
the server's private 0700 socket directory.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import sys
from pathlib import Path

ABSTRACT = sys.platform.startswith("linux")
_CREDS = struct.Struct("3i")  # pid, uid, gid


def worker_address(sock_dir: Path, worker_id: str) -> str:
    """A fresh address for one worker's connection."""
    if ABSTRACT:
        return f"\0dagserve-{os.getpid()}-w{worker_id}-{secrets.token_hex(8)}"
    return str(sock_dir / f"w{worker_id}.sock")


def after_listening(address: str) -> None:
    """Make a file socket private (an abstract one has no file)."""
    if not address.startswith("\0"):
        os.chmod(address, 0o600)


def remove(address: str) -> None:
    if not address.startswith("\0"):
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass


def peer_is_own_user(transport) -> bool:
    """True when the process at the other end runs as this process's user."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return not ABSTRACT  # a file socket in a 0700 directory is private already
    try:
        _, uid, _ = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _CREDS.size))
    except OSError:
        return False
    return uid == os.getuid()
