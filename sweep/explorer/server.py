"""`memsweep serve`: the explorer on a socket, loopback unless told otherwise.

The socket is bound here, before uvicorn starts, so the printed URL names the real port (`--port 0` picks a
free one) and a port in use is one line of error, not a traceback.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from typing import TextIO

from sweep.errors import MemsweepError
from sweep.explorer.app import create_app
from sweep.explorer.data import ExplorerData

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """What a non-loopback bind exposes, or None for a loopback one."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}:{port}, not on loopback: anyone who can reach this machine on port {port} "
            "can read every landed table and the decoded training text (which may hold personal data, secrets or "
            "licensed text), with no password and no encryption. Omit --host to serve 127.0.0.1 only.")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; a one-line MemsweepError if it cannot be had."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, protocol)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        raise MemsweepError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    return f"http://{shown}:{port}/"


def serve(output: Path, host: str = "127.0.0.1", port: int = 8765, out: TextIO = sys.stdout) -> None:
    """Serve `output` read-only until interrupted; prints its URL (and, for a non-loopback host, what that
    exposes) first."""
    import uvicorn

    data = ExplorerData(output)  # refuses a folder that is not an output before anything listens
    # Tokenizers come with transformers, whose AutoTokenizer import pulls in torch (seconds): paid here, before the
    # URL is printed, not by the first page that decodes text.
    from transformers import AutoTokenizer  # noqa: F401

    sock = bind(host, port)
    print(f"memsweep explorer: {url_of(sock, host)} serving {data.output} (read-only; Ctrl-C stops it)", file=out,
          flush=True)
    warning = exposure_warning(host, sock.getsockname()[1])
    if warning:
        print(warning, file=sys.stderr, flush=True)
    app = create_app(data, allowed_hosts=None if is_loopback(host) else ["*"])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, server_header=False))
    server.run(sockets=[sock])
