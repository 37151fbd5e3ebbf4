"""Training of segmentation model packages (Learn2Synth and its baselines).

Importing this package does not import torch: the ``l2s-train`` driver reads the names below
before any training task runs."""

#: training methods: Learn2Synth (parametric or nonparametric augmenter) and the baselines; "oracle"
#: (SynthSeg trained with the true corruption) exists for the synthetic experiments only
METHODS = ("l2s-parametric", "l2s-nonparametric", "synthseg", "oracle", "mixed", "finetune", "supervised")
#: the methods that need labelled real scans
NEEDS_REAL = ("l2s-parametric", "l2s-nonparametric", "mixed", "finetune", "supervised")
#: the learnable parts :class:`l2s_pipelines.augment.ParametricAugmenter` can switch on
AUGMENT_COMPONENTS = ("noise", "bias", "gamma", "blur")
