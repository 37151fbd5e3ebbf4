"""Pydra tasks and workflows of l2s-pipelines (installed as ``l2s_pipelines.workflows``)."""
