"""Gateway: a photo → embed → ANN search → recipes, for mobile backends (gRPC) and people (HTTP)."""
