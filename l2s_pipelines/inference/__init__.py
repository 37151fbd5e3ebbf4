"""Inference: model package + NIfTI image -> native-space posteriors and labels.

The names below load lazily, so that importing a torch-free submodule (``memory``,
``result``) never imports torch: a task that only checks a header or reads a result stays
light.
"""

import importlib

#: Public name -> module defining it.
_EXPORTS = {"MemoryPlan": f"{__name__}.memory", "auto_memory_budget": f"{__name__}.memory",
            "SegmentationResult": f"{__name__}.result", "Segmenter": f"{__name__}.segmenter",
            "resolve_device": f"{__name__}.segmenter", "cpu_allocation": "l2s_pipelines.system"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return __all__
