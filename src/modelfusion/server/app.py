"""The FastAPI app: OpenAI-compatible chat completions backed by `Fusion`, plus the web page.

`create_app(config, store, settings)` builds it (tests call it directly); `fusion serve`
runs it under uvicorn. One `ProviderPool` lives for the app's lifetime: every request's
Fusion shares its pooled HTTP clients and per-provider `max_parallel` gates.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import mimetypes
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from ..config import Config, parse_spec
from ..errors import UsageError
from ..fusion import DEPTH_HEADER, ProviderPool
from ..providers.base import warm
from ..traces.schema import AmbiguousTraceId
from .auth import Keys
from .errors import ApiError, internal_error
from .guards import add_browser_guards, require_json
from .limits import FusionGate
from .models import model_card, model_list
from .openapi import request_body
from .resolve import parse_depth, prepare
from .schemas import parse_chat_request
from .service import FusionService, TraceSink
from .settings import ServerSettings

log = logging.getLogger("modelfusion.server")
STATIC = resources.files("modelfusion.server") / "static"
# The page's scripts are ES modules, which a browser runs only when served as JavaScript;
# Python's guess can come from the Windows registry, where .js is sometimes text/plain.
mimetypes.add_type("text/javascript", ".js")
# The page loads nothing from elsewhere and runs no inline script: say so to the browser.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SSEResponse(StreamingResponse):
    """A stream whose `on_close` runs however it ends: finished, failed, client gone, or
    never started (then the generator's own `finally` would never run)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            self._on_close()


async def _unless_client_leaves(request: Request, work: Any) -> Any:
    """Await `work`, but cancel it (None) if the client disconnects first: a fusion nobody
    waits for must not hold a --max-concurrent slot until its deadline."""

    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(client_gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()


def create_app(config: Config, store: TraceSink | None = None,
               settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    if not settings.traces:  # `fusion serve --no-traces`
        store = None
    gate = FusionGate(settings.max_concurrent, settings.retry_after_s,
                      max_body_bytes=settings.max_body_bytes,
                      body_timeout_s=settings.body_timeout_s)
    service = FusionService(store)
    pool = ProviderPool(config)
    keys = Keys(settings.api_keys, settings.admin_keys)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Before the first request: the openai SDK's import and each client's set-up took
        # seconds on the event loop of the first burst (issue 12, item 13).
        warm(pool.get, startup_providers(config))
        try:
            yield
        finally:
            await pool.aclose()
            flush = getattr(store, "flush", None)
            if flush is not None:
                await asyncio.to_thread(flush)

    # The OpenAPI document is served (/openapi.json: for clients and fuzzers); the
    # interactive docs pages are not (they would load scripts from a CDN).
    app = FastAPI(title="modelfusion", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gate = gate
    app.state.pool = pool
    add_browser_guards(app, settings)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        code = "not_found" if e.status_code == 404 else "method_not_allowed" \
            if e.status_code == 405 else None
        message = str(e.detail)
        if e.status_code == 404 and request.url.path.startswith("/v1/"):
            # An OpenAI client calling an API this server does not have (embeddings, the
            # Responses API...): say what it does have, not just "Not Found".
            message = (f"{request.method} {request.url.path} is not an API of this server; "
                       f"it serves {', '.join(served_apis(app))}")
        err = ApiError(e.status_code, message, code=code)
        return JSONResponse(err.body(), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, e: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 {"detail": [...]}, reshaped like every other error we send.
        first = e.errors()[0] if e.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        err = ApiError(400, f"{param or 'the request'}: {first.get('msg', 'invalid value')}",
                       param=param, code="invalid_value")
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(Exception)
    async def crash(_: Request, e: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=e)
        err = internal_error()
        return JSONResponse(err.body(), status_code=500, headers=err.headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "active_fusions": gate.active,
                "max_concurrent": settings.max_concurrent}

    @app.post("/v1/chat/completions", openapi_extra=request_body(settings))
    async def chat_completions(request: Request) -> Response:
        caller = keys.check(request)
        require_json(request)
        depth = parse_depth(request.headers.getlist(DEPTH_HEADER), settings)
        # Admission (limits.FusionGate.admit): under a burst a refusal costs no body read,
        # parse or plan, and a slow body holds no slot while it arrives.
        slot, raw = await gate.admit(request)
        try:
            req = parse_chat_request(raw, max_messages=settings.max_messages)
            prepared = prepare(req, config, pool, settings, depth, caller.owner)
        except BaseException:
            slot.release()
            raise
        if req.stream:
            return SSEResponse(service.stream(prepared), on_close=slot.release)
        try:
            body = await _unless_client_leaves(request, service.complete(prepared))
        finally:
            slot.release()
        if body is None:  # nobody is listening; the trace says the client went away
            return Response(status_code=499)
        return JSONResponse(body)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        keys.check(request)
        # Off the event loop: whether a local model can run is a look at files.
        data = await asyncio.to_thread(model_list, config, settings.allowed_providers)
        return {"object": "list", "data": data}

    # `:path`: ids hold slashes (fusion/trio; the openai SDK sends them as %2F, which the
    # route sees decoded).
    @app.get("/v1/models/{model_id:path}")
    async def get_model(request: Request, model_id: str) -> dict[str, Any]:
        keys.check(request)
        return await asyncio.to_thread(model_card, config, model_id,
                                       settings.allowed_providers)

    @app.get("/v1/fusion/traces")
    async def list_traces(request: Request, limit: int = 50) -> dict[str, Any]:
        scope = keys.check(request).scope  # a key lists its own traces; admins all
        if not 1 <= limit <= 500:
            raise ApiError(400, "limit must be between 1 and 500", param="limit",
                           code="invalid_value")
        rows = await _read(functools.partial(_store(store).recent, owner=scope), limit)
        return {"object": "list", "data": [r.to_dict() for r in rows]}

    @app.get("/v1/fusion/traces/{trace_id}")
    async def get_trace(request: Request, trace_id: str) -> dict[str, Any]:
        scope = keys.check(request).scope
        # Another key's trace is "no trace": its id is not confirmed to exist either.
        record = await _read(functools.partial(_store(store).get, owner=scope), trace_id)
        if record is None:
            raise ApiError(404, f"no trace {trace_id!r}", param="trace_id",
                           code="trace_not_found")
        return dict(record.to_dict())

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def _store(store: TraceSink | None) -> TraceSink:
    if store is None:
        raise ApiError(404, "this server keeps no traces", code="traces_disabled")
    return store


async def _read(fn: Callable[[Any], Any], arg: Any) -> Any:
    """A store read, off the event loop (SQLite and PostgreSQL drivers block)."""
    try:
        return await asyncio.to_thread(fn, arg)
    except AmbiguousTraceId as e:  # the caller's to fix
        raise ApiError(400, str(e), param="trace_id", code=e.code) from None
    except UsageError as e:
        log.warning("trace store read failed: %s", e)
        raise ApiError(503, "the trace store cannot be read right now",
                       code="store_unavailable") from None


def startup_providers(config: Config) -> list[str]:
    """The providers the presets use, built when the server starts; not `local` ones
    (llama.cpp and its models load when a request needs them)."""
    names: set[str] = set()
    presets = list(config.presets.values())
    with suppress(UsageError):  # a default_preset that does not exist: requests say so
        presets.append(config.default())
    for preset in presets:
        specs = [*preset.models, preset.judge, preset.options.get("fallback_judge")]
        for spec in specs:
            if isinstance(spec, str):
                try:
                    names.add(parse_spec(spec).provider)
                except UsageError:
                    continue
    kinds = {n: config.providers[n].kind for n in names if n in config.providers}
    return sorted(n for n, kind in kinds.items() if kind != "local")


def served_apis(app: FastAPI) -> list[str]:
    """The /v1 routes as "METHOD /path" (POST /v1/chat/completions, ...), read from the app,
    so the list never misses a route."""
    out = []
    for route in app.routes:
        path, methods = getattr(route, "path", ""), getattr(route, "methods", None) or ()
        if path.startswith("/v1/"):
            out += [f"{m} {path.replace(':path', '')}" for m in sorted(methods) if m != "HEAD"]
    return out
