"""What a web page in the user's browser may not do with the server.

A keyless loopback server trusts whoever can reach it, and every web page the user opens can
reach it through the browser:

- **DNS rebinding.** A page on attacker.example whose name then resolves to 127.0.0.1 is, to
  the browser, same-origin with the server: it could read every trace. The browser still
  sends `Host: attacker.example`, so only loopback names and the configured ones are served
  (`allowed_hosts`); `/healthz` answers any (it tells nothing).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError
from .settings import ServerSettings, host_name, is_loopback

OPEN_PATHS = frozenset({"/healthz"})  # served whatever the Host: a load balancer's probe


def add_browser_guards(app: FastAPI, settings: ServerSettings) -> None:
    app.add_middleware(BrowserGuard, hosts=settings.allowed_hosts)


class BrowserGuard:
    """Pure ASGI (no BaseHTTPMiddleware: streams and disconnects pass through untouched).
    Not Starlette's TrustedHostMiddleware: that one answers in plain text, has no open
    paths and no notion of "any loopback name"."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = None if hosts is None else frozenset(filter(None, map(host_name, hosts)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            if self.hosts is not None and scope["path"] not in OPEN_PATHS:
                _check_host(headers.get("host"), self.hosts)
        except ApiError as e:
            await JSONResponse(e.body(), status_code=e.status)(scope, receive, send)
            return
        await self.app(scope, receive, send)



def _check_host(host: str | None, allowed: frozenset[str]) -> None:
    if host is None:  # HTTP/1.0 without Host: not a browser, so not a rebinding page
        return
    name = host_name(host)
    if name is not None and (is_loopback(name) or name in allowed):
        return
    extra = "".join(f", {h}" for h in sorted(allowed))
    raise ApiError(421, f"this server does not answer to Host {host!r} (a web page reaching "
                   "it through a name of its own?): it answers to localhost, 127.0.0.1 and "
                   f"[::1]{extra}; add a name with fusion serve --allowed-host NAME",
                   code="host_not_allowed", param="Host")
