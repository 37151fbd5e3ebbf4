"""Inference: model package + NIfTI image -> native-space posteriors and labels."""

from l2s_pipelines.inference.memory import MemoryPlan, auto_memory_budget
from l2s_pipelines.inference.segmenter import SegmentationResult, Segmenter, cpu_allocation, resolve_device

__all__ = ["MemoryPlan", "SegmentationResult", "Segmenter", "auto_memory_budget", "cpu_allocation", "resolve_device"]
