"""``python -m embedder``: run the embedder gRPC service (same as ``recipelens-embedder``)."""

from embedder.server import main

if __name__ == "__main__":
    main()
