"""The front door of the HTTP app: the page at `/` and the API docs (`/docs`, `/redoc`), all offline.

The page is three files beside this module (index.html, app.css, app.js): no CDN, no build step.
Swagger UI and ReDoc come from the PyPI package `fastapi-offline`, which ships their assets; we
only serve its static folder. Every URL in these pages is relative, so they work behind a reverse
proxy and under a path prefix without the app knowing the prefix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
PAGE_FILES = {"app.js": "text/javascript", "explain.js": "text/javascript", "app.css": "text/css"}
DOCS_ASSETS_PATH = "/docs-assets"
# The page changes with the service: let browsers revalidate instead of caching it blindly.
_REVALIDATE = {"Cache-Control": "no-cache"}
_GET_HEAD = ["GET", "HEAD"]
# The pages may load and fetch from their own origin only. ReDoc's bundle, for one, puts an image
# from its vendor's CDN in its menu: the browser must not even try (air-gapped hosts, privacy).
# Inline script and style stay allowed: Swagger UI is started by an inline script, ReDoc styles inline.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'self'",
    )
)
_PAGE_HEADERS = {**_REVALIDATE, "Content-Security-Policy": CONTENT_SECURITY_POLICY}


def add_front_door(app: FastAPI, openapi_url: str = "openapi.json") -> frozenset[str]:
    """Add `/`, `/web/<file>`, `/docs`, `/redoc` and the docs' assets to `app`.

    Returns the paths these routes serve, which need no API key: the page must load before the
    user has typed one, and it sends the key with its own API calls.
    """
    missing = [name for name in ("index.html", *PAGE_FILES) if not (WEB_DIR / name).is_file()]
    if missing or not (DOCS_ASSETS_DIR / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"front-door assets missing: {missing or DOCS_ASSETS_DIR}")
    title = app.title

    @app.api_route("/", methods=_GET_HEAD, include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    for name, media_type in PAGE_FILES.items():
        route = _file_route(WEB_DIR / name, media_type)
        app.add_api_route(f"/web/{name}", route, methods=_GET_HEAD, include_in_schema=False)

    @app.api_route("/docs", methods=_GET_HEAD, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{title} - Swagger UI",
                swagger_js_url=f"{DOCS_ASSETS_PATH[1:]}/swagger-ui-bundle.js",
                swagger_css_url=f"{DOCS_ASSETS_PATH[1:]}/swagger-ui.css",
                swagger_favicon_url=f"{DOCS_ASSETS_PATH[1:]}/favicon.png",
                oauth2_redirect_url=None,
                # Swagger UI would otherwise fetch a validity badge from swagger.io for every spec.
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.api_route("/redoc", methods=_GET_HEAD, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _with_policy(
            get_redoc_html(
                openapi_url=openapi_url,
                title=f"{title} - ReDoc",
                redoc_js_url=f"{DOCS_ASSETS_PATH[1:]}/redoc.standalone.js",
                redoc_favicon_url=f"{DOCS_ASSETS_PATH[1:]}/favicon.png",
                with_google_fonts=False,
            )
        )

    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    assets = {f"{DOCS_ASSETS_PATH}/{path.name}" for path in DOCS_ASSETS_DIR.iterdir() if path.is_file()}
    return frozenset({"/", "/docs", "/redoc", *(f"/web/{name}" for name in PAGE_FILES), *assets})


def _file_route(path: Path, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    async def serve_file() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers=_REVALIDATE)

    serve_file.__name__ = f"web_{path.stem}_{path.suffix[1:]}"
    return serve_file


def _with_policy(response: HTMLResponse) -> HTMLResponse:
    response.headers.update(_PAGE_HEADERS)
    return response
