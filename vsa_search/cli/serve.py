"""`vsa serve`: one process with the models and an index loaded, a JSON API and a page in the browser."""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated

import typer

from ..core import paths
from ..core.errors import UsageError
from ..index.layout import DEFAULT_NAME
from ..vision.images import DEFAULT_MAX_MEGAPIXELS, MAX_UPLOAD_BYTES
from .common import err
from .index import parse_size

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_cmd(
    index: Annotated[str, typer.Option("--index", help="Index name (or path) to serve.")] = DEFAULT_NAME,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but loopback needs "
                                                     "--token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8000,
    token: Annotated[str | None, typer.Option("--token", envvar="VSA_SERVE_TOKEN",
                                              help="Secret every client must send (Authorization: Bearer "
                                                   "TOKEN, or open /?token=TOKEN once).")] = None,
    max_upload: Annotated[str, typer.Option("--max-upload", help="Largest photo accepted for upload.")] = \
        f"{MAX_UPLOAD_BYTES >> 20}M",
    max_megapixels: Annotated[float, typer.Option("--max-megapixels", min=0.01,
                                                  help="Refuse larger photos before decoding them.")] = \
        DEFAULT_MAX_MEGAPIXELS,
    caption_model: Annotated[str, typer.Option("--caption-model",
                                               help="Caption model file or name.")] = paths.CAPTION_MODEL,
) -> None:
    """Serve an index in the browser: search with words (each word's box drawn on the photo),
    captions, region captions, alignments. Models and index are loaded once; a rebuilt index is
    picked up without a restart."""
    if not is_loopback(host) and not token:
        raise UsageError(f"--host {host} lets other machines reach your photos: give --token SECRET too "
                         "(or set VSA_SERVE_TOKEN), or keep the default --host 127.0.0.1")
    try:
        import uvicorn

        from ..serve import Engine, create_app
    except ImportError as e:
        raise UsageError(f"vsa serve needs {e.name}: pip install 'vsa-search[serve]'") from None
    limit = parse_size(max_upload)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. asyncio sets it only on sockets it creates itself; without
    # it every response waits out the client's delayed ACK (measured: 48 ms per request, 0.4 with).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))  # bound before the models load: a busy port fails at once
        sock.listen(2048)  # clients that connect while uvicorn starts wait in the backlog
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    err.print(f"loading index {index!r} and the models...", highlight=False)
    engine = Engine(index, caption_model=caption_model, max_megapixels=max_megapixels)
    hosts = None
    if is_loopback(host):
        hosts = ("127.0.0.1", "localhost", "[::1]")
    app = create_app(engine, token=token, max_upload=limit, allowed_hosts=hosts)
    bound = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
    with engine.snapshot() as snap:
        n = len(snap.photos)
    url = f"http://{shown}:{bound}/" + ("?token=..." if token else "")
    err.print(f"serving {n} photos of index {index!r} at {url}  (Ctrl-C to stop)", highlight=False)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
