"""Which FP8 backends this Python environment could load, found without importing them."""

from __future__ import annotations

import importlib.util

_BACKEND_MODULES = {"torchao": "torchao", "te": "transformer_engine"}


def installed_fp8_backends() -> frozenset[str]:
    return frozenset(name for name, module in _BACKEND_MODULES.items() if importlib.util.find_spec(module))
