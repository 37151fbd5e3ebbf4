"""Inputs of several neighbouring slices for 2D networks, synthesised in 3D.

A 2D network that sees ``k`` neighbouring slices as input channels (FastSurfer's thick slices)
needs training images whose neighbouring slices belong together: one deformation, one bias field,
one resolution for all of them. :class:`SlabGenerator` therefore runs the 3D
:class:`~l2s_pipelines.synth.generator.SynthGenerator` on a block of neighbouring label slices
(``(B, 1, H, W, D)`` from :class:`~l2s_pipelines.io.nifti.LabelMapDataset` with ``slab_depth=D``,
the slices along the last axis) and returns the ``k`` central slices of the generated patch as
channels, with the target of the middle one. ``D`` leaves room for out-of-plane rotations
(:func:`slab_depth`); the patch is centred in depth so that the middle slice is the one drawn.

Shapes: blocks ``(B, 1, H, W, D)`` long -> image ``(B, k, P, P)`` float, target ``(B, P, P)``
long (left/right-merged encoding where ``merge_lr`` marks an element, see
:mod:`l2s_pipelines.lr_merge`).
"""

from __future__ import annotations

import math

import torch

from l2s_pipelines.synth.generator import SynthGenerator


def slab_depth(slices: int, patch: int, max_rotation_deg: float, max_zoom: float = 0.2) -> int:
    """Odd block depth (slices) that holds the ``slices`` central ones plus what out-of-plane
    rotations of up to ``max_rotation_deg`` about both in-plane axes and a zoom of up to
    ``1 + max_zoom`` reach at the corners of a ``patch``-wide patch.

    >>> slab_depth(3, 128, 15.0), slab_depth(5, 64, 0.0)
    (61, 5)
    """
    reach = (patch / 2) * math.sqrt(2) * math.sin(math.radians(max_rotation_deg)) * (1 + max_zoom)
    return slices + 2 * math.ceil(reach)


class SlabGenerator:
    """``k`` neighbouring synthetic slices as channels (see the module docstring).

    ``generator``: a 3D :class:`SynthGenerator` whose ``patch_size`` is ``(P, P, k)``; its
    left-right flip acts on the block's first axis, left-right for axial and coronal blocks
    (sagittal ones are left/right-merged and never flipped).
    """

    def __init__(self, generator: SynthGenerator):
        patch = generator.config.patch_size
        if patch is None or len(patch) != 3 or patch[2] % 2 == 0:
            raise ValueError(f"SlabGenerator needs a 3D generator with patch (P, P, k), k odd; got {patch}")
        self.generator, self.slices = generator, int(patch[2])

    def __call__(self, blocks: torch.Tensor, generator: torch.Generator, merge_lr: torch.Tensor | None = None):
        """Blocks ``(B, 1, H, W, D)`` -> ``(image (B, k, P, P), target (B, P, P))``."""
        if blocks.dim() != 5 or blocks.shape[-1] < self.slices:
            raise ValueError(f"blocks must be (B, 1, H, W, D) with D >= {self.slices}, got {tuple(blocks.shape)}")
        with torch.no_grad():
            params = self.generator.sample(blocks, generator, merge_lr)
            params.offset[:, -1] = (blocks.shape[-1] - self.slices) / 2  # the drawn slice in the middle
            image, target = self.generator.apply(blocks, params)
        return image[:, 0].movedim(-1, 1).contiguous(), target[..., self.slices // 2].contiguous()
