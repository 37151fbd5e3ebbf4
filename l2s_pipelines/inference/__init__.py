"""Inference: model package + NIfTI image -> native-space posteriors and labels."""

from l2s_pipelines.inference.segmenter import SegmentationResult, Segmenter, cpu_allocation, resolve_device

__all__ = ["SegmentationResult", "Segmenter", "cpu_allocation", "resolve_device"]
