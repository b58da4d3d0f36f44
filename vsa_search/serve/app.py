"""The HTTP side of `vsa serve`: a Starlette app over an Engine. JSON API under /api, the page (static
files shipped in the package) at /. Photos are addressed by their index id only; uploads are read
up to a size cap into a temporary file and opened by the same guarded loader as `index build`.
Every error is a JSON object {"error": "..."} with a 4xx status (5xx only for a server fault)."""

from __future__ import annotations

import hmac
import logging
import mimetypes
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .engine import DUPES_THRESHOLD, Engine, MetaFilter, errors, images, mrf, names

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD = images.MAX_UPLOAD_BYTES  # a photo larger than this is refused before it is decoded
MAX_K = 1000
TOKEN_COOKIE = "vsa_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
GENERATION_HEADER = "X-VSA-Generation"
log = logging.getLogger("vsa.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def status_of(e: errors.VSAError) -> int:
    """HTTP status for a library error: the user's input (400), a photo that cannot be used
    (413 too large, 422 otherwise), something the index does not have (404)."""
    if isinstance(e, errors.ImageTooLargeError):
        return 413
    if isinstance(e, errors.ImageMissingError):
        return 404
    if isinstance(e, errors.ImageError):
        return 422
    if isinstance(e, errors.SearchIndexError):
        return 404
    if isinstance(e, errors.UsageError):
        return 400
    return 400 if not isinstance(e, errors.ModelError) else 500


class Json(JSONResponse):
    """JSON as the CLI's --json writes it: a file name that is not UTF-8 comes as text with its exact
    bytes beside it (core/names.py); starlette's encoder would fail on it."""

    def render(self, content: Any) -> bytes:
        return super().render(names.json_ready(content))


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": names.display(message)}, status_code=status)


# --------------------------------------------------------------------------- parameters


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, f"{name}: {raw!r} is not a whole number") from None
    if not lo <= v <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi} (got {v})")
    return v


def _float(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ApiError(400, f"{name}: {raw!r} is not a number") from None
    if not v >= 0 or v == float("inf"):
        raise ApiError(400, f"{name} must be a finite number >= 0 (got {raw})")
    return v


def _text(request: Request, name: str) -> str:
    v = request.query_params.get(name)
    if v is None or not v.strip():
        raise ApiError(400, f"give the {name} (?{name}=...)")
    if len(v) > 2000:
        raise ApiError(400, f"{name} is too long ({len(v)} characters, at most 2000)")
    return v


def _where(request: Request) -> MetaFilter:
    """The metadata filters of `vsa search` from ?after=&before=&camera=&near=LAT,LON&km= (empty: none)."""
    q = request.query_params
    km = _float(request, "km", 0.0) or None
    return MetaFilter.parse(q.get("after") or None, q.get("before") or None, q.get("camera") or None,
                            q.get("near") or None, km if q.get("near") else None)


def _photo_id(request: Request) -> int:
    raw = request.path_params["photo_id"]
    # ASCII digits only: str.isdigit() and int() also take "²" (which int() then refuses) and other
    # scripts' digits ("١" would be photo 1).
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise ApiError(404, f"photos are addressed by their index id (a number), not {raw!r}")
    return int(raw)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes", "on")


async def _upload(request: Request, limit: int) -> tuple[Path, str]:
    """The request body (a photo) in a temporary file, refused past `limit` bytes while it streams
    in (the Content-Length header is checked first, but not trusted)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload of {int(declared)} bytes is over the {limit} byte limit")
    name = os.path.basename(request.query_params.get("name", "") or "upload")[:200] or "upload"
    fd, tmp = tempfile.mkstemp(prefix="vsa-upload-")
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"upload is over the {limit} byte limit")
                f.write(chunk)
        if size == 0:
            raise ApiError(400, "empty upload: send the photo's bytes as the request body")
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp), name


def _chunks(f: BinaryIO, size: int = 1 << 16) -> Iterator[bytes]:
    """An open photo's bytes (the file checked when it was opened), then it is closed."""
    with f:
        while chunk := f.read(size):
            yield chunk


def _hostname(host: str) -> str:
    """"127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "[::1]"."""
    if host.startswith("["):
        return host[:host.find("]") + 1]
    return host.rsplit(":", 1)[0]


# --------------------------------------------------------------------------- the app


def create_app(engine: Engine, token: str | None = None, max_upload: int = MAX_UPLOAD,
               allowed_hosts: tuple[str, ...] | None = None) -> Starlette:
    """The app over a loaded engine. token: required from every client (Bearer header or the cookie
    that `/?token=...` sets). allowed_hosts: accepted Host headers (None: any), which stops a web
    page on another site from reaching a loopback server through DNS rebinding."""

    def api(fn: Callable[..., Any]) -> Callable[[Request], Awaitable[Response]]:
        return _endpoint(fn, max_upload)

    routes = [Route("/", _page(token)), *_query_routes(engine, api), *_photo_routes(engine, api),
              Mount("/static", app=StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _not_found, Exception: _server_fault},
                    middleware=[Middleware(BaseHTTPMiddleware, dispatch=_guard(token, allowed_hosts))])
    app.state.engine = engine
    return app


Api = Callable[[Callable[..., Any]], Callable[[Request], Awaitable[Response]]]


def _endpoint(fn: Callable[..., Any], max_upload: int) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint: the work runs in a worker thread; its result becomes JSON, its errors JSON 4xx.
    A POST's body is the photo: fn(request, path of its temporary file, its name)."""

    async def endpoint(request: Request) -> Response:
        upload: Path | None = None
        name = ""
        try:
            if request.method == "POST":
                upload, name = await _upload(request, max_upload)
            t0 = time.perf_counter()
            out = await run_in_threadpool(fn, *((request, upload, name) if upload else (request,)))
            # The time spent in the library, apart from HTTP (browsers' dev tools show it).
            timing = {"Server-Timing": f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"}
        except ApiError as e:
            return error(e.status, str(e))
        except errors.VSAError as e:
            # Never show the temporary file's path: the client knows its photo by its name.
            return error(status_of(e), str(e).replace(str(upload), name) if upload else str(e))
        finally:
            if upload is not None:
                upload.unlink(missing_ok=True)
        if isinstance(out, Response):
            out.headers.update(timing)
            return out
        if isinstance(out, tuple):  # (body, generation)
            return Json(out[0], headers={GENERATION_HEADER: out[1], **timing})
        return Json(out, headers=timing)

    return endpoint


def _steer(request: Request) -> str | None:
    q = request.query_params.get("q", "")
    return q if q.strip() else None


def _caption(engine: Engine, request: Request, photo: Path, name: str | None) -> Any:
    beam = _int(request, "beam", 7, 1, 50)
    if _flag(request, "regions"):
        return engine.region_captions(photo, beam, _int(request, "top", 0, 0, 1000), shown_as=name)
    return engine.caption(photo, beam, shown_as=name)


def _query_routes(engine: Engine, api: Api) -> list[Route]:
    """Text search, and what a dropped photo asks (POST: its bytes are the body); duplicates, status."""

    def search_text(request: Request) -> Any:
        minus = [m for m in request.query_params.getlist("minus") if m.strip()]
        min_score = request.query_params.get("min_score")
        return engine.search_text(_text(request, "q"), _int(request, "k", 10, 1, MAX_K),
                                  _int(request, "per_word", 0, 0, 1 << 20) or None, _where(request), minus or None,
                                  _float(request, "min_score", 0.0) if min_score not in (None, "") else None)

    def search_image(request: Request, photo: Path, name: str) -> Any:
        return engine.search_image(photo, _int(request, "k", 10, 1, MAX_K), shown_as=name)

    def like_upload(request: Request, photo: Path, name: str) -> Any:
        return engine.like(photo, _steer(request), _int(request, "k", 10, 1, MAX_K), shown_as=name)

    def align_upload(request: Request, photo: Path, name: str) -> Any:
        return engine.align_upload(photo, _text(request, "sentence"), _float(request, "beta", mrf.DEFAULT_BETA),
                                   shown_as=name)

    def dupes(request: Request) -> Any:
        return engine.dupes(_float(request, "threshold", DUPES_THRESHOLD), _where(request))

    return [
        Route("/api/search", api(search_text)),
        Route("/api/search/image", api(search_image), methods=["POST"]),
        Route("/api/caption", api(lambda request, photo, name: _caption(engine, request, photo, name)),
              methods=["POST"]),
        Route("/api/like", api(like_upload), methods=["POST"]),
        Route("/api/align", api(align_upload), methods=["POST"]),
        Route("/api/dupes", api(dupes)),
        Route("/api/status", api(lambda request: engine.status())),
        Route("/api/skipped", api(lambda request: {"skipped": engine.skipped()})),
    ]


def _photo_routes(engine: Engine, api: Api) -> list[Route]:
    """The indexed photos, addressed by id: the list, one photo's record, its bytes or thumbnail, and
    what can be asked about it (caption, alignment, photos like it)."""

    def photos(request: Request) -> Any:
        return engine.photos(_int(request, "offset", 0, 0, 1 << 40), _int(request, "limit", 100, 1, 1000))

    def image(request: Request) -> Response:
        i = _photo_id(request)
        want = request.query_params.get("g")
        if want:
            with engine.snapshot() as snap:
                if want != snap.generation:
                    raise ApiError(410, "the index was rebuilt since this page asked for it: search again")
        if _flag(request, "full"):
            path, f = engine.open_photo(i)
            return StreamingResponse(_chunks(f), media_type=mimetypes.guess_type(path.name)[0],
                                     headers={"Cache-Control": "private, max-age=60",
                                              "Content-Length": str(os.fstat(f.fileno()).st_size)})
        size = _int(request, "size", 400, 32, 2048)
        return Response(engine.thumbnail(i, size), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=60"})

    def caption_id(request: Request) -> Any:
        return _caption(engine, request, engine.photo_path(_photo_id(request)), None)

    def align_id(request: Request) -> Any:
        return engine.align_id(_photo_id(request), _text(request, "sentence"),
                               _float(request, "beta", mrf.DEFAULT_BETA))

    def like_id(request: Request) -> Any:
        return engine.like(_photo_id(request), _steer(request), _int(request, "k", 10, 1, MAX_K))

    return [
        Route("/api/photos", api(photos)),
        Route("/api/photos/{photo_id}", api(lambda request: engine.photo(_photo_id(request)))),
        Route("/api/photos/{photo_id}/image", api(image)),
        Route("/api/photos/{photo_id}/caption", api(caption_id)),
        Route("/api/photos/{photo_id}/align", api(align_id)),
        Route("/api/photos/{photo_id}/like", api(like_id)),
    ]


# --------------------------------------------------------------------------- page, guard, errors


def _page(token: str | None) -> Callable[[Request], Awaitable[Response]]:
    """The page at /; `/?token=...` (the link `vsa serve --token` prints) trades the token for a cookie."""

    async def page(request: Request) -> Response:
        given = request.query_params.get("token")
        if token and given:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return error(401, "wrong token")
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(TOKEN_COOKIE, request.query_params["token"], httponly=True, samesite="strict")
            return resp
        return FileResponse(STATIC / "index.html")

    return page


def _guard(token: str | None, allowed_hosts: tuple[str, ...] | None) -> Callable[..., Awaitable[Response]]:
    """Every request: the Host header and the token checked, the answer's security headers set."""

    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if allowed_hosts is not None:
            if _hostname(request.headers.get("host", "")) not in allowed_hosts:
                return error(400, f"unexpected Host header {request.headers.get('host')!r}")
        if token and not (request.url.path == "/" and request.query_params.get("token")):
            given = request.cookies.get(TOKEN_COOKIE, "")
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return error(401, "this server needs its token: send `Authorization: Bearer TOKEN`, "
                                  "or open /?token=TOKEN once in the browser")
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' blob: data:; "
                                                       "style-src 'self'; script-src 'self'; frame-ancestors 'none'")
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return guard


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    detail = getattr(exc, "detail", "") or "not found"
    if status == 404:
        detail = f"nothing at {request.url.path}"
    return error(status, str(detail))


async def _server_fault(request: Request, exc: Exception) -> Response:
    log.exception("error in %s %s", request.method, request.url.path)  # the trace stays in the log
    return error(500, f"internal error ({type(exc).__name__}); see the server's log")
