"""The gRPC contracts. ``.proto`` sources live here; generated code lives in ``protos/generated``."""

from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
GENERATED_ROOT = PROTO_ROOT / "generated"
PROTO_FILES = ("recipelens/v1/embedder.proto", "recipelens/v1/search.proto")
