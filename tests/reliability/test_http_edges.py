"""The HTTP front under attack: links in the images root, keys and what anonymous callers learn, offline docs,
malformed multipart, idle and slow connections, size refusals in /metrics, TLS on HTTP.

Each scenario runs a real gateway (``start_gateway``: HTTP and gRPC on loopback, in-process onnxruntime,
Qdrant Edge) and attacks it over sockets.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.client import RecipeSearchClient
from gateway.server import RunningGateway, start_gateway
from gateway.settings import GatewaySettings
from tests.reliability.stack import REPO, World
from tests.support.browser import NEEDS_CHROMIUM, headless_chrome
from tests.support.imagegen import encode, synthetic_photo
from tests.support.load import SEARCH_PATH, multipart_body
from tests.support.tls import NEEDS_OPENSSL, self_signed

pytestmark = pytest.mark.reliability

KEY = "edge-test-key-7f3a"
UPLOAD_LIMIT = 1 << 20


def settings(world: World, images_root: Path | None = None, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "grpc_port": 0,
        "http_port": 0,
        "model_dir": world.model_dir,
        "store_path": world.store_path,
        "images_root": images_root if images_root is not None else world.images,
        "embed_timeout_s": 5.0,
        "max_upload_bytes": UPLOAD_LIMIT,
    }
    values.update(overrides)
    return GatewaySettings(**values)  # type: ignore[arg-type]


def request(
    running: RunningGateway,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host, port = "127.0.0.1", running.server.http_port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# -- 2. /images serves regular raster files only -----------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An images root with honest photos next to links and files that only pretend to be images."""
    base = tmp_path_factory.mktemp("images-attack")
    root = base / "images"
    root.mkdir()
    jpeg = encode(synthetic_photo(1), "JPEG", quality=80)
    png = encode(synthetic_photo(2, (160, 120)), "PNG")
    (root / "real.jpg").write_bytes(jpeg)
    (root / "really-a-png.jpg").write_bytes(png)  # served as what its bytes are
    (base / "page.html").write_text("<html><script>document.title='owned'</script></html>")
    (root / "inside.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    )
    (root / "page.jpg").symlink_to(base / "page.html")  # link out of the root to HTML
    (root / "pic2.png").symlink_to(root / "inside.svg")  # link inside the root to SVG
    (root / "html-named.png").write_text("<!doctype html><script>alert(1)</script>")
    (root / "passwd.jpg").symlink_to("/etc/passwd")
    (root / "alias.jpg").symlink_to(root / "real.jpg")  # a link to a real photo inside: fine
    os.mkfifo(root / "fifo.jpg")
    (root / "dir.jpg").mkdir()
    return root


@pytest.fixture(scope="module")
def plain_gateway(world: World, hostile_root: Path) -> Iterator[RunningGateway]:
    with start_gateway(settings(world, hostile_root), health_period_s=0.2) as running:
        yield running


def test_images_serve_only_regular_raster_files_with_the_type_of_their_bytes(
    plain_gateway: RunningGateway,
) -> None:
    served = {
        "real.jpg": "image/jpeg",
        "really-a-png.jpg": "image/png",
        "alias.jpg": "image/jpeg",
    }
    for name, media_type in served.items():
        status, headers, body = request(plain_gateway, "GET", f"/images/{name}")
        assert status == 200, name
        assert headers["content-type"] == media_type, name
        assert headers["x-content-type-options"] == "nosniff"
        assert body[:2] in (b"\xff\xd8", b"\x89P")
    for name in ("page.jpg", "pic2.png", "html-named.png", "passwd.jpg", "fifo.jpg", "dir.jpg", "inside.svg"):
        status, headers, body = request(plain_gateway, "GET", f"/images/{name}")
        assert status == 404, name
        assert b"<script>" not in body and b"root:" not in body, name
        assert headers["content-type"].startswith("application/json"), name
        assert headers["x-content-type-options"] == "nosniff"


def test_every_response_says_nosniff_and_the_page_has_a_csp(plain_gateway: RunningGateway) -> None:
    for method, path in (
        ("GET", "/"),
        ("GET", "/static/app.js"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/docs"),
        ("GET", "/no/such/path"),
        ("POST", "/healthz"),
    ):
        status, headers, _ = request(plain_gateway, method, path)
        assert headers.get("x-content-type-options") == "nosniff", (method, path, status)
    _, headers, _ = request(plain_gateway, "GET", "/")
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp


# -- 6. /docs offline --------------------------------------------------------------------------------------


def test_docs_are_served_from_the_installed_package(plain_gateway: RunningGateway) -> None:
    status, _, page = request(plain_gateway, "GET", "/docs")
    assert status == 200
    html = page.decode()
    assert "cdn" not in html.lower() and "https://" not in html
    for asset in ("/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"):
        assert asset in html
        status, _, body = request(plain_gateway, "GET", asset)
        assert status == 200 and len(body) > 100_000, asset
    status, _, spec = request(plain_gateway, "GET", "/openapi.json")
    assert status == 200 and SEARCH_PATH in json.loads(spec)["paths"]


# -- 7. edges of the HTTP front ----------------------------------------------------------------------------


def _seed_shape(status: int, body: bytes) -> str:
    answer = json.loads(body)
    assert "detail" not in answer, answer
    assert answer["success"] is False and answer["recipes"] == [], answer
    assert isinstance(answer["errorMessage"], str) and answer["errorMessage"], answer
    return str(answer["errorMessage"])


def test_malformed_multipart_gets_the_api_error_shape(plain_gateway: RunningGateway) -> None:
    no_boundary = request(
        plain_gateway,
        "POST",
        SEARCH_PATH,
        b"--x\r\n\r\nhello\r\n--x--\r\n",
        {"Content-Type": "multipart/form-data"},
    )
    assert no_boundary[0] == 400
    _seed_shape(no_boundary[0], no_boundary[2])

    boundary = "b0undary"
    fields = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n{i}\r\n' for i in range(5000)
    )
    body = (fields + f"--{boundary}--\r\n").encode()
    many = request(
        plain_gateway,
        "POST",
        SEARCH_PATH,
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert many[0] == 400
    assert "field" in _seed_shape(many[0], many[2]).lower()

    not_found = request(plain_gateway, "GET", "/api/v1/nothing-here")
    assert not_found[0] == 404
    _seed_shape(*not_found[:1], not_found[2])


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_idle_and_slow_connections_are_closed(world: World) -> None:
    with start_gateway(
        settings(world, http_header_timeout_s=1.0, http_body_timeout_s=1.5), health_period_s=0.2
    ) as running:
        port = running.server.http_port
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        slow_headers = socket.create_connection(("127.0.0.1", port))
        slow_headers.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        slow_body = socket.create_connection(("127.0.0.1", port))
        body, content_type = multipart_body(encode(synthetic_photo(3), "JPEG"))
        slow_body.sendall(
            f"POST {SEARCH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:100]
        )
        started = time.monotonic()
        try:
            # A caller that behaves is answered meanwhile.
            status, _, _ = request(running, "GET", "/healthz")
            assert status == 200
            for i in range(5):  # the slow one dribbles a header now and then: still too slow in total
                time.sleep(0.2)
                try:
                    slow_headers.sendall(f"X-{i}: y\r\n".encode())
                except OSError:
                    break  # already closed by the server
            assert all(_closed_within(s, 3.0) for s in idle), "idle connections stayed open"
            assert _closed_within(slow_headers, 3.0), "a connection still sending headers stayed open"
            assert _closed_within(slow_body, 3.0), "a connection still sending its body stayed open"
            assert time.monotonic() - started < 6.0
            status, _, _ = request(running, "GET", "/healthz")
            assert status == 200
        finally:
            for s in [*idle, slow_headers, slow_body]:
                s.close()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def test_size_refusals_say_the_configured_limit_and_are_counted(
    plain_gateway: RunningGateway, photos: list[bytes]
) -> None:
    huge = b"\xff\xd8\xff" + os.urandom(UPLOAD_LIMIT + 200_000)
    body, content_type = multipart_body(huge)
    status, headers, answer = request(
        plain_gateway, "POST", SEARCH_PATH, body, {"Content-Type": content_type}
    )
    assert status == 413 and headers["x-content-type-options"] == "nosniff"
    message = _seed_shape(status, answer)
    assert str(UPLOAD_LIMIT) in message and str(UPLOAD_LIMIT + 64 * 1024) not in message, message

    with RecipeSearchClient(plain_gateway.grpc_address, timeout_s=10) as client:
        for size in (UPLOAD_LIMIT + 1, 3 * UPLOAD_LIMIT):
            with pytest.raises(grpc.RpcError) as caught:
                client.search(b"\xff\xd8\xff" + b"\0" * size)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"the limit is {UPLOAD_LIMIT} bytes" in (caught.value.details() or "")

    _, _, exposition = request(plain_gateway, "GET", "/metrics")
    text = exposition.decode()
    assert _metric(text, "recipelens_gateway_requests_total", api="http", code="413") >= 1
    assert _metric(text, "recipelens_gateway_errors_total", api="http", kind="RESOURCE_EXHAUSTED") >= 1
    assert _metric(text, "recipelens_gateway_requests_total", api="grpc", code="RESOURCE_EXHAUSTED") >= 2


# -- 5. with API keys on, anonymous callers learn nothing -------------------------------------------------


@pytest.fixture(scope="module")
def keyed_gateway(world: World) -> Iterator[RunningGateway]:
    with start_gateway(settings(world, api_keys=[KEY]), health_period_s=0.2) as running:
        yield running


def test_anonymous_readiness_is_only_ready_or_not(keyed_gateway: RunningGateway, world: World) -> None:
    status, _, body = request(keyed_gateway, "GET", "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True}
    for secret in (str(world.store_path), str(world.model_dir), "127.0.0.1", "alias", "recipes-"):
        assert secret not in body.decode()
    status, _, body = request(keyed_gateway, "GET", "/readyz", headers={"Authorization": "Bearer wrong"})
    assert json.loads(body) == {"ready": True}
    status, _, body = request(keyed_gateway, "GET", "/readyz", headers={"Authorization": f"Bearer {KEY}"})
    answer = json.loads(body)
    assert answer["ready"] is True and "store" in answer["checks"]


def test_metrics_and_docs_need_a_key(keyed_gateway: RunningGateway) -> None:
    basic = "Basic " + base64.b64encode(f"anyone:{KEY}".encode()).decode()
    for path in ("/metrics", "/docs", "/openapi.json", "/docs-static/swagger-ui-bundle.js"):
        status, headers, body = request(keyed_gateway, "GET", path)
        assert status == 401, path
        assert (
            headers["www-authenticate"].startswith("Basic") and headers["x-content-type-options"] == "nosniff"
        )
        _seed_shape(status, body)
        wrong = request(keyed_gateway, "GET", path, headers={"Authorization": "Bearer nope"})
        assert wrong[0] == 401, path
        for auth in (f"Bearer {KEY}", basic):
            status, _, _ = request(keyed_gateway, "GET", path, headers={"Authorization": auth})
            assert status == 200, (path, auth.split()[0])
    assert request(keyed_gateway, "GET", "/healthz")[0] == 200  # liveness stays open for probes
    assert request(keyed_gateway, "GET", "/")[0] == 200  # the page asks for the key itself


def test_metrics_on_their_own_port(world: World) -> None:
    with start_gateway(settings(world, api_keys=[KEY], metrics_port=0), health_period_s=0.2) as running:
        assert request(running, "GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})[0] == 404
        port = running.server.metrics_port
        assert port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        assert answer.status == 200 and b"recipelens_gateway_requests" in answer.read()
        conn.close()


# -- 9. TLS on HTTP ----------------------------------------------------------------------------------------


@NEEDS_OPENSSL
def test_tls_pair_serves_https_and_refuses_plaintext(
    world: World, tmp_path: Path, photos: list[bytes]
) -> None:
    cert, key = self_signed(tmp_path)
    with start_gateway(settings(world, tls_cert=cert, tls_key=key, api_keys=[KEY])) as running:
        assert running.http_url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        port = running.server.http_port
        tls = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        tls.request("GET", "/")
        page = tls.getresponse()
        assert page.status == 200 and b"recipelens" in page.read()
        body, content_type = multipart_body(photos[0])
        tls.request(
            "POST",
            SEARCH_PATH,
            body=body,
            headers={"Content-Type": content_type, "Authorization": f"Bearer {KEY}"},
        )
        answer = tls.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["success"] is True
        tls.close()
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            status, _, _ = request(running, "GET", "/healthz")  # plaintext HTTP on the HTTPS port
            assert status != 200  # an error page is a refusal too; never the answer itself


def test_keys_over_plaintext_beyond_loopback_refuse_to_start(world: World) -> None:
    env = {
        **os.environ,
        "RECIPELENS_GATEWAY_API_KEYS": KEY,
        "RECIPELENS_GATEWAY_HTTP_HOST": "0.0.0.0",
        "RECIPELENS_GATEWAY_HTTP_PORT": "0",
        "RECIPELENS_GATEWAY_GRPC_PORT": "0",
        "RECIPELENS_GATEWAY_MODEL_DIR": str(world.model_dir),
        "RECIPELENS_GATEWAY_STORE_PATH": str(world.store_path),
    }
    refused = subprocess.run(
        [sys.executable, "-m", "gateway.server"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert "RECIPELENS_GATEWAY_BEHIND_TLS_PROXY" in refused.stderr and "Traceback" not in refused.stderr
    assert KEY not in refused.stderr + refused.stdout
    # Declared behind a TLS-terminating proxy, or bound to loopback, the same keys are accepted.
    assert settings(world, api_keys=[KEY], http_host="0.0.0.0", behind_tls_proxy=True).api_keys
    assert settings(world, api_keys=[KEY], http_host="127.0.0.1").api_keys


@NEEDS_CHROMIUM
def test_docs_render_in_a_browser_without_internet(plain_gateway: RunningGateway, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # Anything not on loopback fails at once, as it would offline: only the gateway's own assets load.
    driver = headless_chrome(tmp_path, "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    try:
        driver.set_page_load_timeout(30)
        driver.get(plain_gateway.http_url + "/docs")
        title = WebDriverWait(driver, 30).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title"))
        )
        assert "recipelens gateway" in title.text
        assert driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path[data-path='/api/v1/search']")
    finally:
        driver.quit()
