"""The HTTP API on loopback: legacy JSON shape, errors, upload limit, images, probes, metrics, OpenAPI."""

from __future__ import annotations

import re
import socket

import httpx
import pytest

from gateway.server import RunningGateway, start_gateway
from tests.gateway.conftest import XSS_TITLE, World, gateway_settings

LEGACY_KEYS = {"recipes", "totalResults", "processingTime", "timestamp", "success", "errorMessage"}
RECIPE_KEYS = {"rank", "title", "imagePath", "ingredients", "instructions", "similarity"}


@pytest.fixture(scope="module")
def http(gateway: RunningGateway) -> httpx.Client:
    with httpx.Client(base_url=gateway.http_url, timeout=20) as c:
        yield c


def _search(http: httpx.Client, data: bytes, **form: str) -> httpx.Response:
    return http.post("/api/v1/search", files={"image": ("photo.jpg", data, "image/jpeg")}, data=form)


def test_search_answers_in_the_legacy_shape(http: httpx.Client, query_photos: list[bytes]) -> None:
    response = _search(http, query_photos[4], top_k="4")
    assert response.status_code == 200
    body = response.json()
    assert body.keys() >= LEGACY_KEYS
    assert body["success"] is True and body["errorMessage"] is None
    assert body["totalResults"] == 4 == len(body["recipes"])
    assert body["processingTime"] > 0 and body["timestamp"].endswith("Z")
    first = body["recipes"][0]
    assert first.keys() >= RECIPE_KEYS
    assert first["rank"] == 1 and first["title"] == "Recipe 4" and first["imagePath"] == "/images/r004.jpg"
    assert isinstance(first["ingredients"], list) and 0 < first["similarity"] <= 1.0001
    image = http.get(first["imagePath"])
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"


def test_content_type_is_sniffed_not_trusted(http: httpx.Client, query_photos: list[bytes]) -> None:
    lying = http.post("/api/v1/search", files={"image": ("x.txt", query_photos[1], "text/plain")})
    assert lying.status_code == 200 and lying.json()["recipes"][0]["title"] == "Recipe 1"
    text = http.post("/api/v1/search", files={"image": ("x.jpg", b"<html>not a photo</html>", "image/jpeg")})
    assert text.status_code == 400
    body = text.json()
    assert body.keys() >= LEGACY_KEYS and body["success"] is False and body["recipes"] == []
    assert "image" in body["errorMessage"]


@pytest.mark.parametrize("top_k", ["0", "101", "many"])
def test_bad_top_k_is_400_in_legacy_shape(http: httpx.Client, query_photos: list[bytes], top_k: str) -> None:
    response = _search(http, query_photos[0], top_k=top_k)
    assert response.status_code == 400
    assert response.json()["success"] is False and "top_k" in response.json()["errorMessage"]


def test_missing_image_is_400(http: httpx.Client) -> None:
    response = http.post("/api/v1/search", data={"top_k": "3"})
    assert response.status_code == 400 and response.json()["success"] is False


def test_upload_limit_before_the_body_is_read(gateway: RunningGateway) -> None:
    """Content-Length over the limit gets 413 at once, without the server waiting for the body."""
    host, port = gateway.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 50000000\r\n\r\n--b\r\n"
        )
        reply = b""
        while b'"success"' not in reply and (chunk := sock.recv(65536)):
            reply += chunk
        text = reply.decode()
    assert text.startswith("HTTP/1.1 413")
    assert '"success":false' in text.replace(" ", "")


def test_oversized_streamed_upload_is_413(http: httpx.Client) -> None:
    def chunks():  # no Content-Length: the server must count while reading
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        for _ in range(12):
            yield b"\0" * (1 << 20)

    response = http.post(
        "/api/v1/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413 and response.json()["success"] is False


def test_get_recipe_and_escaping_is_the_page_job(http: httpx.Client) -> None:
    response = http.get("/api/v1/recipes/r000")
    assert response.status_code == 200
    assert response.json()["recipe"]["title"] == XSS_TITLE  # JSON carries it as data; the page escapes it
    assert http.get("/api/v1/recipes/nope").status_code == 404
    assert http.get("/api/v1/recipes/nope").json()["success"] is False


@pytest.mark.parametrize(
    "path",
    [
        "/images/../secret.txt",
        "/images/%2e%2e/secret.txt",
        "/images/..%2fsecret.txt",
        "/images/../secret.jpg",
        "/images/..%2fsecret.jpg",
        "/images/notes.csv",
        "/images//etc/passwd",
        "/images/none.jpg",
    ],
)
def test_image_paths_cannot_escape(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 404
    assert "outside the image folder" not in response.text and "root:" not in response.text


def _stage_counts(metrics: str) -> dict[str, float]:
    found = re.findall(r'^recipelens_gateway_stage_seconds_count\{stage="([a-z]+)"\} (\S+)$', metrics, re.M)
    return {stage: float(count) for stage, count in found}


def test_probes_metrics_docs_page(http: httpx.Client, query_photos: list[bytes]) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    _search(http, query_photos[0])
    _search(http, b"")
    metrics = http.get("/metrics").text
    for stage in ("check", "decode", "embed", "search"):
        assert f'recipelens_gateway_stage_seconds_count{{stage="{stage}"}}' in metrics
    # One observation per stage and search (the header check is its own stage, not a second "decode").
    before = _stage_counts(metrics)
    _search(http, query_photos[0])
    after = _stage_counts(http.get("/metrics").text)
    assert {stage: after[stage] - before.get(stage, 0) for stage in after} == {
        "check": 1,
        "decode": 1,
        "embed": 1,
        "search": 1,
    }
    assert 'recipelens_gateway_requests_total{api="http",code="200",method="search"}' in metrics
    assert 'recipelens_gateway_errors_total{api="http",kind="INVALID_ARGUMENT",method="search"}' in metrics
    spec = http.get("/openapi.json").json()
    assert "/api/v1/search" in spec["paths"] and "/api/v1/recipes/{recipe_id}" in spec["paths"]
    assert http.get("/docs").status_code == 200
    page = http.get("/")
    assert page.status_code == 200 and 'accept="image/*"' in page.text
    assert http.get("/static/app.js").status_code == 200


def test_http_auth(world: World, query_photos: list[bytes]) -> None:
    with (
        start_gateway(gateway_settings(world, api_keys='["k1"]')) as running,
        httpx.Client(base_url=running.http_url, timeout=20) as c,
    ):
        files = {"image": ("p.jpg", query_photos[0], "image/jpeg")}
        assert c.post("/api/v1/search", files=files).status_code == 401
        assert (
            c.post("/api/v1/search", files=files, headers={"Authorization": "Bearer k2"}).status_code == 401
        )
        assert c.get("/api/v1/recipes/r001").status_code == 401
        ok = c.post("/api/v1/search", files=files, headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200 and ok.json()["success"] is True
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_readyz_fails_when_the_alias_is_missing(world: World, query_photos: list[bytes]) -> None:
    with (
        start_gateway(gateway_settings(world, alias="nothing-here")) as running,
        httpx.Client(base_url=running.http_url, timeout=20) as c,
    ):
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "nothing-here" in ready.json()["checks"]["store"]
        missing = c.post("/api/v1/search", files={"image": ("p.jpg", query_photos[0], "image/jpeg")})
        assert missing.status_code == 409 and "nothing-here" in missing.json()["errorMessage"]
