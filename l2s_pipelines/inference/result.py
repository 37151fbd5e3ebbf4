"""The result of a segmentation on the input's native grid (no torch: the measure and figure
tasks read it without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from l2s_pipelines.labels import LabelTable


@dataclass
class SegmentationResult:
    """Output of :meth:`Segmenter.segment`, on the input's native grid.

    dseg : (X, Y, Z) int16 label values.
    posteriors : (X, Y, Z, K) in label-table order (None if not requested): float32 summing to
        1 over K, or uint8 holding ``round(255 p)`` when ``posteriors_scale`` is ``1/255``.
    affine : the input's affine, unchanged. timings_s : seconds per stage (checks, preprocess,
    predict, cleanup when the package asks for it, to_native, total).
    soft_sums : (K,) float64 sum over native voxels of each label's posterior (in voxels,
        computed from float32 posteriors whatever ``posteriors``' dtype); times the voxel
        volume = soft volumes in mm^3.
    confidence_sum, confidence_count : sum of the maximum posterior over voxels whose label is
        not background (value 0), and the number of those voxels (QC low-confidence flag).
    """

    dseg: np.ndarray
    posteriors: np.ndarray | None
    label_table: LabelTable
    affine: np.ndarray
    timings_s: dict = field(default_factory=dict)
    device: str = "cpu"
    header: nib.Nifti1Header | None = None
    soft_sums: np.ndarray | None = None
    confidence_sum: float = 0.0
    confidence_count: int = 0
    posteriors_scale: float = 1.0

    @property
    def mean_max_posterior(self) -> float:
        """Mean maximum posterior over non-background voxels (NaN when there are none)."""
        return self.confidence_sum / self.confidence_count if self.confidence_count else float("nan")

    def _image(self, data: np.ndarray, dtype, slope: float = 1.0) -> nib.Nifti1Image:
        hdr = self.header.copy() if self.header is not None else None
        img = nib.Nifti1Image(data.astype(dtype, copy=False), self.affine, header=hdr)
        img.set_data_dtype(dtype)
        img.header.set_slope_inter(slope, 0.0)
        img.header["cal_min"], img.header["cal_max"] = 0, 0
        return img

    def dseg_image(self) -> nib.Nifti1Image:
        """``dseg`` as an int16 NIfTI with the input's affine and header geometry."""
        return self._image(self.dseg, np.int16)

    def probseg_image(self) -> nib.Nifti1Image:
        """``posteriors`` as a 4D NIfTI ``(X, Y, Z, K)``: float32, or uint8 with the NIfTI
        scale ``scl_slope = 1/255`` (readers applying it, e.g. nibabel's ``get_fdata``, get
        probabilities within 1/255; the ``descrip`` field says so)."""
        if self.posteriors is None:
            raise ValueError("posteriors were not requested (return_posteriors=False)")
        if self.posteriors.dtype == np.uint8:
            img = self._image(self.posteriors, np.uint8, slope=self.posteriors_scale)
            img.header["descrip"] = b"probability = value * scl_slope (1/255)"
            return img
        return self._image(self.posteriors, np.float32)
