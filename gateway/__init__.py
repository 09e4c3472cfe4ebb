"""Gateway: a photo → embed → ANN search → recipes, for mobile backends (gRPC) and people (HTTP).

The one search path is :class:`gateway.pipeline.SearchGateway` (used by :mod:`gateway.grpc_service`,
:mod:`gateway.http_app` and the ``recipelens-search`` CLI in :mod:`gateway.cli`); what it answers is in
:mod:`gateway.search`, its one error type in :mod:`gateway.errors`, the images it serves in
:mod:`gateway.images`, what every HTTP request passes first (limits, keys, the error shape) in
:mod:`gateway.http_edges`; :mod:`gateway.server` runs both front ends (``recipelens-gateway``).
"""
