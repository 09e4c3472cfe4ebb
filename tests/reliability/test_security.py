"""Security checks: no unsafe deserialisation on any load path, API keys never logged, payloads escaped."""

from __future__ import annotations

import ast
import http.client
import io
import json
import os
import pickle
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.client import RecipeSearchClient
from tests.gateway.conftest import XSS_TITLE
from tests.reliability.stack import REPO, Stack, World
from tests.support.load import SEARCH_PATH, multipart_body

pytestmark = pytest.mark.reliability

SCANNED = ("embedder", "indexer", "gateway", "training", "protos")
# The one allowed pickle user: a restricted Unpickler whose find_class hands out an allow-list only.
PICKLE_ALLOWED = {Path("training/pth_reader.py")}
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_uses(source: str, *, pickle_allowed: bool = False) -> list[str]:
    """Every unsafe deserialisation or dynamic-code call in ``source``, as ``line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module.split(".")[0]]
        for module in modules:
            if module in BANNED_MODULES and not (pickle_allowed and module == "pickle"):
                found.append(f"{node.lineno}: import {module}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        dynamic = name in ("eval", "exec", "builtins.eval", "builtins.exec", "__import__")
        unpickle = name.endswith(("pickle.load", "pickle.loads")) or name in ("torch.load", "joblib.load")
        if (
            dynamic
            or unpickle
            or name.startswith(("marshal.", "shelve.", "yaml.unsafe_load", "yaml.full_load"))
        ):
            found.append(f"{node.lineno}: {name}()")
        elif name in ("np.load", "numpy.load"):
            flag = keywords.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(f"{node.lineno}: {name}(allow_pickle=...)")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _dotted(keywords["Loader"]) if "Loader" in keywords else ""
            if not loader.endswith(("SafeLoader", "CSafeLoader")):
                found.append(f"{node.lineno}: {name}() without SafeLoader")
    return found


def _sources() -> list[Path]:
    files: list[Path] = []
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel.parts[:2] != ("protos", "generated"):
                files.append(rel)
    return files


def test_scanner_finds_what_it_must() -> None:
    bad = """
import pickle, joblib
from marshal import loads
import numpy as np, yaml, torch
pickle.loads(b"")
np.load("x.npy", allow_pickle=True)
yaml.load(open("a"))
torch.load("m.pt")
eval("1")
exec("x = 1")
"""
    assert len(unsafe_uses(bad)) == 9
    good = """
import numpy as np, yaml, json
np.load("x.npy")
np.load("x.npy", allow_pickle=False)
yaml.safe_load("a: 1")
yaml.load("a: 1", Loader=yaml.SafeLoader)
json.loads("{}")
"""
    assert unsafe_uses(good) == []


def test_no_pickle_or_eval_on_any_load_path() -> None:
    files = _sources()
    assert len(files) > 30 and Path("gateway/pipeline.py") in files
    problems = {
        str(rel): found
        for rel in files
        if (found := unsafe_uses((REPO / rel).read_text(), pickle_allowed=rel in PICKLE_ALLOWED))
    }
    assert problems == {}


def test_the_one_pickle_user_is_restricted() -> None:
    for rel in PICKLE_ALLOWED:
        if not (REPO / rel).exists():
            pytest.skip(f"{rel} is not in this checkout")
        tree = ast.parse((REPO / rel).read_text())
        unpicklers = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and any(_dotted(b) == "pickle.Unpickler" for b in node.bases)
        ]
        assert unpicklers, f"{rel} must subclass pickle.Unpickler"
        for cls in unpicklers:
            assert "find_class" in {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    from training import pth_reader

    with pytest.raises(pth_reader.UnsafeCheckpointError, match=r"(posix|os)\.system"):
        pth_reader._RestrictedUnpickler(io.BytesIO(pickle.dumps(os.system)), {}).load()


def test_static_page_never_writes_html() -> None:
    """The page puts server strings in with textContent / URL attributes only: no HTML sinks at all."""
    static = REPO / "gateway" / "static"
    files = sorted([*static.glob("*.js"), *static.glob("*.html")])
    assert any(f.suffix == ".js" for f in files)
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\s*\(|new\s+Function\s*\(|"
        r"setTimeout\s*\(\s*['\"`]|\.setAttribute\s*\(\s*['\"]on|srcdoc"
    )
    hits = [
        f"{f.name}:{i}: {line.strip()}"
        for f in files
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if sinks.search(line) and not line.strip().startswith("//")
    ]
    assert hits == []
    assert "textContent" in (static / "app.js").read_text()


KEYS = (f"key-{secrets.token_hex(12)}", f"key-{secrets.token_hex(12)}")


@pytest.fixture(scope="module")
def keyed_stack(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Auth on with two random keys; both services log at DEBUG, so any leak would show."""
    stack = Stack(
        world,
        tmp_path_factory.mktemp("keyed-logs"),
        gateway_env={"RECIPELENS_GATEWAY_API_KEYS": ",".join(KEYS), "RECIPELENS_GATEWAY_LOG_LEVEL": "DEBUG"},
        embedder_env={"RECIPELENS_EMBEDDER_LOG_LEVEL": "DEBUG"},
    )
    with stack:
        yield stack


def _http(
    port: int, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str]
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_api_keys_never_logged(keyed_stack: Stack, photos: list[bytes]) -> None:
    good, other = KEYS
    wrong = f"key-{secrets.token_hex(12)}"
    seen: list[str] = []
    with RecipeSearchClient(keyed_stack.grpc_address, api_key=good) as client:
        assert client.search(photos[0]).hits[0].recipe.id == "r000"
        with pytest.raises(grpc.RpcError) as info:
            client.search(b"not a photo")
        seen.append(info.value.details() or "")
    with RecipeSearchClient(keyed_stack.grpc_address, api_key=other) as client:
        assert client.get_recipe("r001").id == "r001"
    for key in (wrong, None):
        with RecipeSearchClient(keyed_stack.grpc_address, api_key=key) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.search(photos[0])
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            seen.append(info.value.details() or "")
    body, content_type = multipart_body(photos[1])
    for key, expected in ((good, 200), (wrong, 401), (f"Basic {good}", 401)):
        auth = key if key.startswith("Basic") else f"Bearer {key}"
        status, data = _http(
            keyed_stack.http_port,
            "POST",
            SEARCH_PATH,
            body=body,
            headers={"Content-Type": content_type, "Authorization": auth},
        )
        assert status == expected, data[:200]
        seen.append(data.decode())
    for path in ("/metrics", "/readyz", "/api/v1/recipes/r002"):
        status, data = _http(keyed_stack.http_port, "GET", path, headers={"Authorization": f"Bearer {wrong}"})
        seen.append(data.decode())
    keyed_stack.stop()  # flush and close the logs: everything the processes ever wrote is now on disk
    logs = keyed_stack.gateway.log() + keyed_stack.embedder.log()
    assert "starting gateway" in logs and "<2 key(s)>" in logs and "refused (UNAUTHENTICATED)" in logs
    for key in (good, other, wrong):
        assert key not in logs
        assert all(key not in answer for answer in seen)


def test_payload_strings_are_json_escaped(stack: Stack) -> None:
    """A title holding markup comes back as the same characters inside a JSON string, never as markup."""
    photo = (stack.world.images / "r000.jpg").read_bytes()
    body, content_type = multipart_body(photo, top_k=1)
    status, data = _http(
        stack.http_port, "POST", SEARCH_PATH, body=body, headers={"Content-Type": content_type}
    )
    assert status == 200
    answer = json.loads(data)
    recipe = answer["recipes"][0]
    assert recipe["title"] == XSS_TITLE and "<b>bold?</b>" in recipe["instructions"]
    assert "\n" in recipe["instructions"] and b"\\n" in data  # control characters escaped in the JSON text
    status, data = _http(stack.http_port, "GET", "/api/v1/recipes/r000", headers={})
    assert status == 200 and json.loads(data)["recipe"]["title"] == XSS_TITLE
    with RecipeSearchClient(stack.grpc_address) as client:
        assert client.search(photo, top_k=1).hits[0].recipe.title == XSS_TITLE
