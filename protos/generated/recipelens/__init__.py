"""Generated gRPC code; regenerate with `python -m protos.codegen`."""
