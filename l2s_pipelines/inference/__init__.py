"""Inference: model package + NIfTI image -> native-space posteriors and labels.

The names below load lazily, so that importing a torch-free submodule (``memory``,
``result``) never imports torch: a task that only checks a header or reads a result stays
light.
"""

import importlib

#: Public name -> submodule defining it.
_EXPORTS = {"MemoryPlan": "memory", "auto_memory_budget": "memory", "SegmentationResult": "result",
            "Segmenter": "segmenter", "resolve_device": "segmenter", "cpu_allocation": "segmenter"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__():
    return __all__
