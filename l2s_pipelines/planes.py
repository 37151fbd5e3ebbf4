"""Anatomical planes of a RAS volume: the one definition used by training, inference, model
manifests and the report figures (no torch or numpy import, so command lines can use it).

>>> PLANES, PLANE_AXIS["axial"], sorted(PLANES)
(('sagittal', 'coronal', 'axial'), 2, ['axial', 'coronal', 'sagittal'])
"""

#: Plane names in RAS axis order: the slices of ``PLANES[i]`` run along RAS axis ``i``
#: (sagittal: x, left-right; coronal: y, posterior-anterior; axial: z, inferior-superior).
PLANES = ("sagittal", "coronal", "axial")
#: RAS axis each plane's slices run along.
PLANE_AXIS = {plane: axis for axis, plane in enumerate(PLANES)}
#: Planes whose slices do not show the hemisphere (a sagittal slice looks alike on both sides):
#: 2D networks learn them on left/right-merged labels and inference takes the side from the other
#: planes (:mod:`l2s_pipelines.lr_merge`).
LR_MERGED_PLANES = ("sagittal",)
