"""Embedder: photo bytes → L2-normalised vectors with onnxruntime, served over gRPC.

This package is the serving side's core; the indexer, the gateway and training import
`embedder.preprocess` and `embedder.manifest` from here (never the other way round).
"""
