"""The page at / and the API docs work offline: no page references an external URL, every asset a page
references is served by the app itself (relative URLs, so a path prefix works), and none of it
needs the API key while the API does."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.http.app import create_app
from service.core.engine import Engine
from service.metrics import Metrics
from service.settings import Settings

BASE = "http://testserver/"
# Anything with a scheme or a network location: http://, https://, //cdn..., ws://.
EXTERNAL = re.compile(r"""(?:\b[a-z][a-z0-9+.-]*:)?//[a-z0-9.-]+\.[a-z]{2,}""", re.IGNORECASE)


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value:
                self.urls.append(value)


@pytest.fixture
def client() -> TestClient:
    settings = Settings(api_key="secret-key")
    metrics = Metrics(process_metrics=False)
    return TestClient(create_app(Engine(settings, metrics), settings, metrics))


def references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", ["/", "/docs", "/redoc"])
def test_pages_reference_no_external_url(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert EXTERNAL.findall(response.text) == []
    # And the browser is told to load nothing from elsewhere, whatever a bundled script asks for.
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "img-src 'self'" in policy
    urls = references(response.text)
    assert urls, "a page with no assets is not the page"
    for url in urls:
        if url.startswith("data:"):
            continue
        # Relative (no leading slash): resolved against the page, so a path prefix is kept.
        assert not url.startswith("/") and not urlsplit(url).scheme, url
        asset = client.get(urljoin(BASE + page.lstrip("/"), url))
        assert asset.status_code == 200, url


@pytest.mark.parametrize("asset", ["/web/app.js", "/web/app.css"])
def test_page_assets_are_local_and_relative(client: TestClient, asset: str) -> None:
    response = client.get(asset)
    assert response.status_code == 200
    assert EXTERNAL.findall(response.text) == []
    # fetch("v1/models"), not fetch("/v1/models"): an absolute path would escape a path prefix.
    assert re.findall(r"""fetch\(\s*[`'"]/""", response.text) == []
    assert "no-cache" in response.headers["cache-control"]


def test_docs_point_at_the_local_spec_and_no_validator(client: TestClient) -> None:
    docs = client.get("/docs").text
    assert "url: 'openapi.json'" in docs and '"validatorUrl": null' in docs
    assert 'spec-url="openapi.json"' in client.get("/redoc").text
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "effnet-serve"
    assert spec["servers"] == [{"url": "."}]  # "Try it out" stays under a proxy's path prefix


async def test_front_door_is_open_but_the_api_needs_the_key(tmp_path: Path) -> None:
    settings = Settings(api_key="secret-key", repository=tmp_path)  # an empty repository
    metrics = Metrics(process_metrics=False)
    engine = Engine(settings, metrics)
    await engine.start()
    transport = httpx.ASGITransport(app=create_app(engine, settings, metrics))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            pages = ("/", "/web/app.js", "/web/app.css", "/docs", "/redoc", "/docs-assets/swagger-ui.css")
            for path in pages:
                assert (await client.get(path)).status_code == 200, path
            assert (await client.head("/")).status_code == 200
            assert (await client.get("/v1/models")).status_code == 401
            keyed = await client.get("/v1/models", headers={"Authorization": "Bearer secret-key"})
            assert keyed.status_code == 200 and keyed.json()["models"] == []
    finally:
        await engine.stop()
