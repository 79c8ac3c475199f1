"""The web app at ``/``: go live, watch, chat, gift and call from a browser.

Plain HTML, CSS and JavaScript modules under ``api/static/`` (served as
static files at ``/static/``), and one third-party file: the socket.io-client
ESM bundle, installed by ``npm ci`` in ``web/`` (``make run`` does it) and
served at :data:`SOCKET_IO_PATH`. The pages are also the example client for
app developers: WHIP and WHEP with ``fetch``, Socket.IO events as DESIGN.md
names them, REST with a Bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from aiohttp import web

from api.components import Airwave
from api.errors import ApiError
from api.routing import ApiRoutes

routes = ApiRoutes("webapp")

STATIC_DIR = Path(__file__).parent / "static"
WEB_DIR = Path(__file__).parent.parent / "web"
SOCKET_IO_BUNDLE = WEB_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"
SOCKET_IO_PATH = "/vendor/socket.io.esm.min.js"
NO_CACHE = {"Cache-Control": "no-cache"}


@routes.get("/", summary="The web app: go live, watch, chat, gift, call", auth=False,
            responses={200: "the app's HTML page"})
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)


@routes.get(SOCKET_IO_PATH, summary="The socket.io-client ESM bundle the web app imports", auth=False,
            responses={200: "JavaScript module", 503: "not installed: run `npm ci` in web/ (make run does)"})
async def socket_io_bundle(request: web.Request) -> web.FileResponse:
    if not SOCKET_IO_BUNDLE.is_file():
        raise ApiError(503, "webapp_not_installed",
                       "the socket.io-client bundle is missing: run `npm ci --no-audit --no-fund` in web/ "
                       "(make run does it)")
    return web.FileResponse(SOCKET_IO_BUNDLE, headers=NO_CACHE)


def inline_script_hashes(html: str) -> list[str]:
    """CSP sources for the page's inline scripts (``'sha256-...'``), so that only they run."""
    bodies = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    return ["'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'" for b in bodies]


def content_security_policy(host: str, script_hashes: list[str]) -> str:
    """What the page needs: its own modules and styles, fetch and Socket.IO to this
    host, gift images from anywhere over HTTPS; never framed, no plugins."""
    sockets = f" ws://{host} wss://{host}" if host else ""
    return "; ".join([
        "default-src 'self'",
        "script-src 'self' " + " ".join(script_hashes),
        "style-src 'self'",
        "img-src 'self' data: https:",
        "media-src 'self' blob:",
        "connect-src 'self'" + sockets,
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def install(airwave: Airwave, app: web.Application) -> None:
    """The app's own files; static routes are files, not API operations. Every
    response says nosniff and no-referrer; the page gets its CSP."""
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    script_hashes = inline_script_hashes((STATIC_DIR / "index.html").read_text())

    async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.content_type == "text/html":
            host = request.headers.get("Host", "")
            safe_host = host if re.fullmatch(r"[A-Za-z0-9.\-\[\]:]{1,255}", host) else ""
            response.headers["Content-Security-Policy"] = content_security_policy(safe_host, script_hashes)
            response.headers["X-Frame-Options"] = "DENY"

    app.on_response_prepare.append(security_headers)
