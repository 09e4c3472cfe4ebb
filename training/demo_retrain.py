"""``make demo-retrain``: the loop the stack exists for, against the running ``make demo`` stack.

1. fine-tune on the demo catalogue (``tl-hard``, or ``ft`` with ``--preset ft``) and export the model
   into the embedder's model folder, which serves it beside the old one as soon as it sees it;
2. re-index the catalogue with the new model into a new collection (``recipelens-index build``, which
   moves the alias only when the collection is complete and its quality gate finds it no worse than
   the live one — ``--force`` overrides the gate) while a client keeps searching through the gateway;
3. print the before/after table (the run's held-out evaluation: raw vs the new model), how many
   searches the gateway answered during the re-index and how many failed (zero downtime: none), the
   model version that answered before and after, and the quality gate's verdict.

    python -m training.demo_retrain [--preset tl-hard|ft] [--catalog data/demo] [--models models]
                                    [--store-path var/qdrant] [--embedder 127.0.0.1:50051]
                                    [--http 127.0.0.1:8080]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedder.logs import configure_logging


@dataclass
class SearchLoad:
    """A client searching through the gateway's HTTP API in a loop, counting answers and failures."""

    url: str
    photo: bytes
    ok: int = 0
    failed: int = 0
    versions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def search(self) -> str:
        """One search; the model version that answered it."""
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        )
        body = head.encode() + self.photo + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(  # noqa: S310 (an http:// URL built in main)
            f"{self.url}/api/v1/search",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return str(json.load(response).get("modelVersion", "?"))

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self.search()
                self.ok += 1
                if not self.versions or self.versions[-1] != version:
                    self.versions.append(version)
            except (OSError, ValueError) as exc:
                self.failed += 1
                self.errors.append(str(exc))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def _served(address: str, folder: Path, timeout_s: float = 60.0) -> bool:
    """Wait until the embedder at ``address`` serves the model folder's version (it polls its model
    directory every ``RECIPELENS_EMBEDDER_RELOAD_INTERVAL_S``); False after ``timeout_s``."""
    from embedder.client import EmbedderClient
    from embedder.errors import EmbedderError
    from embedder.manifest import read_manifest

    version = read_manifest(folder).version
    deadline = time.monotonic() + timeout_s
    with EmbedderClient(address) as client:
        while time.monotonic() < deadline:
            try:
                if any(m.version == version for m in client.model_info().models):
                    return True
            except EmbedderError:
                pass
            time.sleep(0.5)
    return False


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo-retrain", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tl-hard", choices=["tl-hard", "ft"])
    parser.add_argument("--catalog", type=Path, default=Path("data/demo"))
    parser.add_argument("--models", type=Path, default=Path("models"), help="the embedder's model folder")
    parser.add_argument("--store-path", type=Path, default=Path("var/qdrant"))
    parser.add_argument("--embedder", default="127.0.0.1:50051")
    parser.add_argument("--http", default="127.0.0.1:8080", help="the gateway's HTTP address")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--force", action="store_true", help="move the alias even if the quality gate refuses"
    )
    args = parser.parse_args(argv)
    configure_logging("INFO")
    url = f"http://{args.http}"
    queries = sorted((args.catalog / "queries").glob("*.jpg"))
    if not _ready(url) or not queries:
        print(
            f"demo-retrain: no demo stack answering at {url} (or no photos in {args.catalog}/queries): "
            "run `make demo` in another terminal first",
            file=sys.stderr,
        )
        return 2
    load = SearchLoad(url, queries[0].read_bytes())
    before = load.search()
    print(f"==> live model before: {before}")

    print(f"==> 1/3 fine-tuning ({args.preset}) on {args.catalog}, exporting into {args.models}")
    from training.presets import preset_config
    from training.train import run

    started = time.perf_counter()
    result = run(preset_config(args.preset).overridden(args.assignments), args.catalog, args.models)
    trained_s = time.perf_counter() - started
    print(f"    {result.model_dir} in {trained_s:.0f} s")
    from training.quantize import Int8Settings, QuantizationError, quantize_model, serving_choice

    model_dir = result.model_dir
    # The int8 twin where it agrees with fp32 within RECIPELENS_INT8_* and runs faster here (the demo's rule)
    int8_settings = Int8Settings()
    try:
        twin = quantize_model(
            result.model_dir, catalog=args.catalog, out_dir=args.models, settings=int8_settings
        )
        model_dir, why = serving_choice(result.model_dir, twin, int8_settings)
        print(f"    int8 twin {twin}: {why}")
    except QuantizationError as exc:
        print(f"    int8 twin refused, indexing with fp32: {exc}")

    if not _served(args.embedder, model_dir):
        print(
            f"demo-retrain: the embedder at {args.embedder} does not serve {model_dir} after 60 s",
            file=sys.stderr,
        )
        return 1
    print("==> 2/3 re-indexing with the new model while a client keeps searching through the gateway")
    worker = threading.Thread(target=load.run, daemon=True)
    worker.start()
    command = [
        sys.executable, "-m", "indexer.cli", "build", "--catalog", str(args.catalog),
        "--model", str(model_dir), "--embedder", args.embedder,
        "--store-path", str(args.store_path), "--no-progress", *(["--force"] if args.force else []),
    ]  # fmt: skip
    index = subprocess.run(command, capture_output=True, text=True, check=False)
    time.sleep(1.0)  # a few searches after the swap
    load.stop()
    worker.join(timeout=15)
    after = load.search()

    print("==> 3/3 before / after")
    print((result.run_dir / "evaluation.md").read_text())
    print(index.stdout.strip())
    gate = [line for line in index.stderr.splitlines() if "quality gate" in line]
    print(
        "quality gate: "
        + (gate[-1].split("quality gate", 1)[1].lstrip(": ") if gate else "(no verdict logged)")
    )
    if index.returncode != 0:
        print(index.stderr.strip().splitlines()[-1] if index.stderr.strip() else "", file=sys.stderr)
    print(f"searches answered during the re-index: {load.ok}, failed: {load.failed}")
    for error in load.errors[:3]:
        print(f"  e.g. {error}")
    print(f"model versions that answered, in order: {' → '.join(load.versions) or '-'}")
    moved = after != before
    verdict = "alias moved to the new model" if moved else "alias kept on the old model"
    print(f"live model: {before} → {after} ({verdict}; indexer exit {index.returncode})")
    return 0 if index.returncode == 0 and load.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
