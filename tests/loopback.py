"""What the process tests need to talk to the processes they start on loopback."""

from __future__ import annotations

import json
import socket
import urllib.request


def free_port() -> int:
    """A TCP port nothing listens on right now (a process started with it may still find it taken: rare)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())
