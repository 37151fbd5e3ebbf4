"""Posterior clean-up by connected components, on the model grid (SynthSeg-style post-processing).

Two steps, each switched by the model package (``inference.cleanup`` in the manifest):

- ``"structures"``: for every topological group of labels (one structure, or a few that form one
  connected body such as a lateral ventricle with its inferior horn; :data:`TOPOLOGY_GROUPS`), the
  posteriors of its labels are set to zero outside the largest connected component of the voxels
  where any of them exceeds ``threshold`` (0.2, as SynthSeg); islands of a structure far from it
  (a "hippocampus" in the temporal pole, a left putamen in the right hemisphere) go to the other
  labels.
- ``"brain"``: non-background voxels (argmax) outside the largest connected component of all of
  them become background (islands in the neck, eyes or skull of a whole-head scan).

The posteriors are renormalised to sum to one. Labels outside every group (extracerebral CSF,
which is no single body) are left alone. Connectivity: faces (6-neighbourhood), SciPy's default.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from l2s_pipelines.labels import LabelTable

#: FreeSurfer label values that form one connected body each: per hemisphere white matter,
#: cortex, lateral ventricle + inferior lateral ventricle, cerebellum white matter + cortex,
#: thalamus, caudate, putamen, pallidum, hippocampus, amygdala, accumbens, ventral DC; and the
#: 3rd ventricle, the 4th ventricle and the brainstem. CSF (24) is not one body: not cleaned.
TOPOLOGY_GROUPS = ((2,), (3,), (4, 5), (7, 8), (10,), (11,), (12,), (13,), (17,), (18,), (26,), (28,),
                   (41,), (42,), (43, 44), (46, 47), (49,), (50,), (51,), (52,), (53,), (54,), (58,), (60,),
                   (14,), (15,), (16,))
CLEANUP_STEPS = ("structures", "brain")


def topology_groups(table: LabelTable) -> list[list[int]]:
    """Channel indices of each group of :data:`TOPOLOGY_GROUPS` whose labels are all in ``table``."""
    present = set(table.values)
    return [[table.index_of(v) for v in group] for group in TOPOLOGY_GROUPS if set(group) <= present]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean ``mask`` (all False when it is empty)."""
    components, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def clean_posteriors(post: torch.Tensor, table: LabelTable, steps=CLEANUP_STEPS,
                     threshold: float = 0.2) -> torch.Tensor:
    """Clean ``post`` ``(K, *spatial)`` (channel 0 background; any device, float16 or float32) in
    place by the ``steps`` named in :data:`CLEANUP_STEPS`; returns it."""
    unknown = set(steps) - set(CLEANUP_STEPS)
    if unknown:
        raise ValueError(f"unknown clean-up step(s) {sorted(unknown)}; choose from {CLEANUP_STEPS}")
    if "structures" in steps:
        above = post > threshold
        for group in topology_groups(table):
            mask = above[group].any(0).cpu().numpy()
            if mask.any():
                keep = torch.from_numpy(largest_component(mask)).to(post.device)
                post[group] *= keep.to(post.dtype)
        del above
        total = post.sum(0)
        empty = total <= 0  # every label zeroed (no background probability left): background
        post[0][empty] = 1
        post /= torch.where(empty, torch.ones_like(total), total)
    if "brain" in steps:
        brain = (post.argmax(0) != 0).cpu().numpy()
        if brain.any():
            outside = torch.from_numpy(~largest_component(brain)).to(post.device)
            post[:, outside] = 0
            post[0, outside] = 1
    return post
