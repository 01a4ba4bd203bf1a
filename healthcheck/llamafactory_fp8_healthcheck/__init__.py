"""Healthcheck for a llamafactory-fp8 container: GPUs healthy, trainer alive, its log advancing."""
