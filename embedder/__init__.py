"""Embedder: photo bytes → L2-normalised vectors with onnxruntime, served over gRPC.

The ground floor of the serving side: the indexer, the gateway and training import from here (never the
other way round). Where each shared concept lives:

* the one preprocessing function — :mod:`embedder.preprocess`; the model manifest — :mod:`embedder.manifest`
* model folders (find, verify, load) — :mod:`embedder.model_folders`; loaded ones — :mod:`embedder.repository`
* the one embedder interface — :mod:`embedder.embedding` (and its sync wrapper for CLIs), implemented
  in-process by :mod:`embedder.inprocess` (one micro-batcher per model version, :mod:`embedder.batcher`)
  and remotely by :mod:`embedder.remote` (through :mod:`embedder.client`); :mod:`embedder.factory` picks one
* the service — :mod:`embedder.servicer` (RPCs), :mod:`embedder.server` (lifecycle, ``recipelens-embedder``)
* shared plumbing — :mod:`embedder.errors`, :mod:`embedder.settings`, :mod:`embedder.logs`,
  :mod:`embedder.background` (a loop in a thread, the one test/tool harness for both services)
"""
