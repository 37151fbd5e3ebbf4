"""l2s_pipelines: Learn2Synth brain MRI segmentation (method library).

The core package is pure torch + numpy + nibabel. The Pydra workflows live in
``l2s_pipelines.workflows`` and the BIDS App in ``l2s_pipelines.bids_app``.
"""

__version__ = "0.1.0"
