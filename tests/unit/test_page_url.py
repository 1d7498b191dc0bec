"""The one line a person follows once the server is ready: `open http://HOST:PORT/`."""

from __future__ import annotations

import pytest

from service.__main__ import page_url


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://localhost:8000/"),
        ("::", "http://localhost:8000/"),
        ("127.0.0.1", "http://127.0.0.1:8000/"),
        ("::1", "http://[::1]:8000/"),
        ("serve.example", "http://serve.example:8000/"),
    ],
)
def test_page_url_is_one_a_browser_opens(host: str, url: str) -> None:
    assert page_url(host, 8000) == url
