"""SynthSeg-style synthesis: :class:`SynthGenerator` with a frozen :class:`SynthConfig`."""

from l2s_pipelines.synth.generator import SynthConfig, SynthGenerator, SynthParams
from l2s_pipelines.synth.intensity import corrupt_noise

__all__ = ["SynthConfig", "SynthGenerator", "SynthParams", "corrupt_noise"]
