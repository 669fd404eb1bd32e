"""Open files: every client holds a socket (two through an upstream), so `serve` lifts the soft
limit on open files to the hard one at start, as Ollama's Go runtime does. Without it a soft
limit of 1024 stops a server near a thousand clients, and macOS's 256 far sooner."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time

import pytest

from .test_logs import Serve

SOFT = 64  # what the server starts with here, far under what the clients below need


def start_low():
    """For preexec_fn: the child starts with a soft limit of SOFT, its hard limit unchanged."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def test_the_soft_limit_rises_to_the_hard_one():
    code = ("import resource; from ollama_compat.server import raise_open_file_limit; raise_open_file_limit(); "
            "print(*resource.getrlimit(resource.RLIMIT_NOFILE))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=start_low, capture_output=True, text=True, check=True)
    soft, hard = map(int, out.stdout.split())
    expected = hard if hard != resource.RLIM_INFINITY else 10240
    assert soft == expected or (hard == resource.RLIM_INFINITY and soft > SOFT)


@pytest.fixture
def models_dir(tmp_path):
    return tmp_path / "models"


def test_serve_takes_more_clients_than_its_starting_soft_limit(models_dir, tmp_path):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    clients = 300
    assert hard == resource.RLIM_INFINITY or hard > clients + 200, f"this machine's hard limit ({hard}) is too low"
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > clients + 100, "this test process needs the files too"
    server = Serve(models_dir, tmp_path, preexec_fn=start_low)
    held = []
    try:
        with open(f"/proc/{server.proc.pid}/limits") as f:
            line = next(x for x in f if x.startswith("Max open files"))
        assert int(line.split()[3]) > clients, line  # the soft limit, raised at start
        for _ in range(clients):  # all open at once, each with its answer read and kept alive
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            s.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            held.append(s)
        deadline = time.time() + 60
        for s in held:
            s.settimeout(max(1.0, deadline - time.time()))
            assert s.recv(4096).startswith(b"HTTP/1.1 200"), "a client got no answer"
        assert len(os.listdir(f"/proc/{server.proc.pid}/fd")) > clients
    finally:
        for s in held:
            s.close()
        server.close()
