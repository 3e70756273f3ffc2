"""The web dashboard at `/ui`: static HTML, CSS and JavaScript served by the API process.

Nothing here is dynamic and nothing needs a key: the page asks for an API key, keeps it in the
tab's sessionStorage and sends it as `Authorization: Bearer` on every `/v1/` call it makes, so
what the dashboard shows is exactly what that key may see through the REST API. The files ship
in the wheel as package data (pyproject's `[tool.setuptools.package-data]`); no CDN, no build
step. A strict Content-Security-Policy (scripts, styles and connections from this origin only,
no inline script, no form submission) keeps an injected string from reading the key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "/ui"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
           (b"cache-control", b"no-cache")]  # revalidated (ETag): an upgraded server's files are picked up


class DashboardFiles(StaticFiles):
    """StaticFiles whose responses carry the dashboard's security and caching headers."""

    async def __call__(self, scope, receive, send) -> None:
        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in HEADERS}
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message = message | {"headers": kept + HEADERS}
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def mount_ui(app: FastAPI) -> None:
    """`/ui/` serves the dashboard (index.html for the folder); `/ui` redirects there."""

    @app.api_route(PREFIX, methods=["GET", "HEAD"], include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    app.mount(PREFIX, DashboardFiles(directory=STATIC_DIR, html=True), name="ui")
