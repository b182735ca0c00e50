"""Print the PostgreSQL URL given on the command line when a server answers there, else nothing.

`make test` uses this to export STAGEWISE_TEST_PG_URL only where PostgreSQL really runs.
"""

import socket
import sys
from urllib.parse import urlsplit


def answers(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    if len(sys.argv) > 1 and answers(sys.argv[1]):
        print(sys.argv[1])
