"""Who listens on a port, from the kernel's tables: the process that bound it, not another."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from metasup.effects.process.sockets import listening_inodes, listens_on
from testing.fixtures import wait_for


def test_the_listener_is_the_process_that_holds_the_socket() -> None:
    code = (
        "import socket, sys, time\n"
        "s = socket.create_server(('127.0.0.1', 0))\n"
        "print(s.getsockname()[1], flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        assert listening_inodes(port)
        assert listens_on([proc.pid], port) is True
        assert listens_on([os.getpid()], port) is False  # answered, but not by us
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            nobody = free.getsockname()[1]
        assert listens_on([proc.pid], nobody) is False
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not listening_inodes(port), what="the socket closed")
