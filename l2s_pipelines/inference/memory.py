"""Memory budget of one segmentation: how one byte budget is split between its big buffers.

A budget is a target for the buffers that scale with the image, not a hard limit of the
process: the input volume (float32, 4 bytes per native voxel), the int16 labels (2 bytes per
native voxel) and, when posteriors are returned, the probability array (``K`` bytes per native
voxel in uint8, ``4 K`` in float32) come on top, as do torch's and Python's fixed costs.

=====================  ============================================================
part                   share of the budget ``B``
=====================  ============================================================
network activations    ``B / 8`` (16 MiB - 2 GiB): 2D batch size, 3D automatic patch
model-space buffer     float32 while ``K * voxels * 4 <= B / 4``, float16 above; it
                       covers the head's bounding box only (see ``Segmenter``)
native slab            ``B / 32`` (4 MiB - 256 MiB) of float32 posteriors at once
returned posteriors    float32 while ``X * Y * Z * K * 4 <= B / 4``, else uint8
                       (probability = value / 255) when ``posteriors_dtype="auto"``
=====================  ============================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class MemoryPlan:
    """Byte bounds of the large buffers of :meth:`Segmenter.segment` (see the module docstring).

    activation_bytes : network activations of one forward pass (batch of slices or 3D patch).
    buffer_float32_max_bytes : model-space posteriors stay float32 up to this size.
    slab_bytes : float32 native posteriors of one slab.
    posteriors_float32_max_bytes : returned posteriors stay float32 up to this size (``auto``).
    """

    activation_bytes: int = GIB
    buffer_float32_max_bytes: int = GIB
    slab_bytes: int = 256 * MIB
    posteriors_float32_max_bytes: int = 2 * GIB

    @classmethod
    def from_budget(cls, budget_bytes: int | None) -> "MemoryPlan":
        """Split ``budget_bytes`` (None: the defaults above, made for a 1 mm 256^3 image)."""
        if budget_bytes is None:
            return cls()
        b = int(budget_bytes)
        if b <= 0:
            raise ValueError(f"memory budget must be positive, got {budget_bytes} bytes")
        return cls(activation_bytes=min(max(b // 8, 16 * MIB), 2 * GIB), buffer_float32_max_bytes=b // 4,
                   slab_bytes=min(max(b // 32, 4 * MIB), 256 * MIB), posteriors_float32_max_bytes=b // 4)


def available_memory_bytes() -> int:
    """Memory this process can still get: the system's (psutil's ``available`` when psutil is
    installed, else ``MemAvailable`` of ``/proc/meminfo``, else free physical pages), bounded
    by the headroom of this process's address-space limit (``ulimit -v``) and of its cgroup v2
    ``memory.max`` (containers, batch jobs)."""
    return min([_system_available_bytes(), *_limit_headroom_bytes()])


def _system_available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _limit_headroom_bytes() -> list[int]:
    """Bytes left under RLIMIT_AS (limit - current VmSize) and cgroup v2 memory.max (limit -
    memory.current), for the limits that are set (Linux; empty elsewhere)."""
    out = []
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status", encoding="ascii") as fh:
                vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
            out.append(max(0, soft - vm))
    except (ImportError, OSError, StopIteration, ValueError):
        pass
    try:
        with open("/proc/self/cgroup", encoding="ascii") as fh:
            rel = next(line.strip().split("::", 1)[1] for line in fh if line.startswith("0::"))
        base = "/sys/fs/cgroup" + rel.rstrip("/")
        with open(base + "/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        if limit != "max":
            with open(base + "/memory.current", encoding="ascii") as fh:
                out.append(max(0, int(limit) - int(fh.read().strip())))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return out


def auto_memory_budget(workers: int = 1, *, mem_mb: int | None = None, fraction: float = 0.8) -> int:
    """Budget in bytes for one of ``workers`` concurrent segmentations.

    ``mem_mb`` (MiB, e.g. from ``--mem``; None or 0: unknown) is the whole job's bound; without
    it, ``fraction`` of the currently available memory is shared. Never below 256 MiB.
    """
    total = int(mem_mb) * MIB if mem_mb else int(fraction * available_memory_bytes())
    return max(256 * MIB, total // max(1, int(workers)))
