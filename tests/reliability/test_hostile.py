"""The hostile upload corpus over gRPC and HTTP: each upload gets its expected status, nothing crashes."""

from __future__ import annotations

import contextlib
import http.client
import json

import grpc
import pytest

from gateway.client import RecipeSearchClient
from tests.reliability.hostile import CORPUS, GRPC_STATUS, HTTP_STATUS, Hostile
from tests.reliability.stack import Stack
from tests.support.load import SEARCH_PATH, multipart_body

pytestmark = pytest.mark.reliability

UPLOAD_LIMIT = 1 << 20  # RECIPELENS_GATEWAY_MAX_UPLOAD_BYTES of the `stack` fixture
_made: dict[str, bytes] = {}


def upload(case: Hostile) -> bytes:
    if case.name not in _made:
        _made[case.name] = case.make(UPLOAD_LIMIT)
    return _made[case.name]


def test_corpus_is_big_and_varied() -> None:
    assert len(CORPUS) >= 30
    assert len({c.name for c in CORPUS}) == len(CORPUS)
    assert {c.expect for c in CORPUS} == set(GRPC_STATUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_grpc(case: Hostile, stack: Stack) -> None:
    with RecipeSearchClient(stack.grpc_address, timeout_s=30) as client:
        try:
            response = client.search(upload(case), top_k=3)
            status, detail = "OK", ""
        except grpc.RpcError as exc:
            status, detail = exc.code().name, exc.details() or ""
    assert status == GRPC_STATUS[case.expect], detail
    if status == "OK":
        assert len(response.hits) == 3
    else:
        assert detail and "Traceback" not in detail


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_http(case: Hostile, stack: Stack) -> None:
    body, content_type = multipart_body(upload(case), top_k=3)
    conn = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=30)
    try:
        # refused before the whole body was sent: the answer is still waiting to be read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", SEARCH_PATH, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    assert response.status == HTTP_STATUS[case.expect], data[:300]
    answer = json.loads(data)
    assert answer["success"] is (case.expect == "OK")
    if answer["success"]:
        assert len(answer["recipes"]) == 3
    else:
        assert answer["errorMessage"] and "Traceback" not in answer["errorMessage"]


def test_still_serving_after_the_corpus(stack: Stack, photos: list[bytes]) -> None:
    """Runs after the corpus (file order): both processes alive, SERVING, searches right, no traceback."""
    assert stack.gateway.alive() and stack.embedder.alive()
    with RecipeSearchClient(stack.grpc_address, timeout_s=10) as client:
        assert client.health() == "SERVING"
        assert client.search(photos[3]).hits[0].recipe.id == "r003"
    for service in (stack.gateway, stack.embedder):
        assert "Traceback" not in service.log(), service.log()[-3000:]
    assert "refused (INVALID_ARGUMENT)" in stack.gateway.log()
