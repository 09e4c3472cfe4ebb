"""recipelens."""
