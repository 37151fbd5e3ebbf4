"""synth subpackage of l2s_pipelines."""
