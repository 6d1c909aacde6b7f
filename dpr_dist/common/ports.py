"""A free TCP port on the loopback interface (rendezvous of local process groups, test clusters)."""

from __future__ import annotations

import socket


def free_port() -> int:
    # Port 0 asks the kernel for an unused one; another process could take it before we bind it
    # again, which is the accepted race of every launcher that picks a port this way.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
