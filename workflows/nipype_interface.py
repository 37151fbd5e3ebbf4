"""A nipype interface to segment one NIfTI file, for users' nipype workflows.

:class:`L2SSegment` runs :func:`~l2s_pipelines.workflows.segment_files.segment_to_folder` (the
step ``l2s-segment`` and the Pydra task :func:`~l2s_pipelines.workflows.segment_files.SegmentFile`
also run) in the node's working folder, so its outputs are the same files.

Example (runs in docs/plain_files.md and tests/test_segment_entry_points.py)
-------
>>> from nipype import Node
>>> seg = Node(L2SSegment(in_file="sub-01_T1w.nii.gz", threads=1), name="l2s")  # doctest: +SKIP
>>> seg.run().outputs.dseg  # doctest: +SKIP
'.../l2s/result/dseg.nii.gz'
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network

from nipype.interfaces.base import (  # noqa: E402
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

#: Outputs present only when asked for (posteriors, resample) or available (reference).
_OPTIONAL = ("probseg", "dice", "resampled")


class L2SSegmentInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, resolve=True, mandatory=True, desc="3D NIfTI image to segment")
    model = Directory(exists=True, resolve=True, desc="model package folder (default: the bundled model)")
    device = traits.Str("auto", usedefault=True, desc="auto, cpu, cuda or cuda:N")
    threads = traits.Int(1, usedefault=True, desc="torch CPU threads")
    posteriors = traits.Bool(False, usedefault=True, desc="also write 4D posteriors (probseg)")
    resample = traits.Bool(False, usedefault=True,
                           desc="segment on the model grid (RAS, model voxel size); outputs on that grid")
    reference = File(exists=True, resolve=True, desc="reference label map on the input grid: adds a Dice table")
    mem_mb = traits.Int(0, usedefault=True, desc="memory budget in MiB (0: automatic)")


class L2SSegmentOutputSpec(TraitedSpec):
    out_dir = Directory(exists=True, desc="result folder")
    dseg = File(exists=True, desc="int16 label map (dseg.nii.gz)")
    dseg_tsv = File(exists=True, desc="look-up table of the labels (dseg.tsv)")
    volumes = File(exists=True, desc="hard and soft volume per label in mm^3 (volumes.tsv)")
    qc = File(exists=True, desc="automated QC flags (qc.json)")
    info = File(exists=True, desc="model, device, threads and timings (info.json)")
    probseg = File(desc="4D posteriors, with posteriors=True")
    dice = File(desc="Dice per label, with a reference")
    resampled = File(desc="the input on the model grid, with resample=True")


class L2SSegment(SimpleInterface):
    """Segment a brain MRI into the 33 SynthSeg labels with an l2s-pipelines model package."""

    input_spec = L2SSegmentInputSpec
    output_spec = L2SSegmentOutputSpec

    def _run_interface(self, runtime):
        from l2s_pipelines.workflows.segment_files import load_segmenter, segment_to_folder
        from l2s_pipelines.workflows.tasks import memory_budget_bytes

        inputs = self.inputs
        budget = memory_budget_bytes(inputs.mem_mb, inputs.threads)
        segmenter = load_segmenter(inputs.model if isdefined(inputs.model) else None, device=inputs.device,
                                   threads=inputs.threads, budget_bytes=budget)
        done = segment_to_folder(segmenter, inputs.in_file, Path(runtime.cwd) / "result",
                                 posteriors=inputs.posteriors, resample=inputs.resample,
                                 reference=inputs.reference if isdefined(inputs.reference) else None,
                                 budget_bytes=budget)
        files = done["files"]
        self._results["out_dir"] = str(Path(runtime.cwd) / "result")
        for name in ("dseg", "dseg_tsv", "volumes", "qc", "info", *_OPTIONAL):
            if name in files:
                self._results[name] = str(files[name])
        return runtime
