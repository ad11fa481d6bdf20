"""The client side of the tcp and http checks: connect, or GET, and say what happened.

Standard library only, so the same code runs on a remote host: netlab.remote.ssh
ships this file to the remote `python3` (`python3 - KIND ADDRESS PORT PATH`,
the source on stdin), whose main() prints the outcome as one JSON line.
Locally, netlab.check.verify calls reach() from a thread inside the check's
namespace.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
from typing import Tuple

TIMEOUT = 3  # seconds, for a connection or an answer


def reach(kind: str, address: str, port: int, path: str = "/", timeout: float = TIMEOUT) -> Tuple[bool, str]:
    """(ok, detail) of a tcp connection or an HTTP GET to ADDRESS:PORT from here."""
    try:
        if kind == "http":
            return _http(address, port, path or "/", timeout)
        with socket.create_connection((address, port), timeout=timeout):
            return True, "connected"
    except socket.timeout:
        return False, f"no answer in {timeout:g} s"
    except ConnectionRefusedError:
        return False, "connection refused"
    except OSError as error:
        return False, (error.strerror or str(error)).lower()
    except http.client.HTTPException as error:
        return False, str(error)


def _http(address: str, port: int, path: str, timeout: float) -> Tuple[bool, str]:
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read(200).decode("utf-8", "replace").strip().splitlines()
    finally:
        connection.close()
    first = body[0][:60] if body else ""
    return 200 <= response.status < 400, f"HTTP {response.status}" + (f": {first}" if first else "")


def main(argv) -> int:
    """`KIND ADDRESS PORT [PATH]`: print [ok, detail] as JSON; exit 0 (the check ran)."""
    kind, address, port = argv[0], argv[1], int(argv[2])
    print(json.dumps(reach(kind, address, port, argv[3] if len(argv) > 3 else "/")))
    sys.stdout.flush()
    return 0
