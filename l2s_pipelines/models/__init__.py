"""models subpackage of l2s_pipelines."""
