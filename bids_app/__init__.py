"""The l2s-bids BIDS App (installed as ``l2s_pipelines.bids_app``)."""
