"""A model's measured accuracy, as its package records it, and what the product says about it.

A model package's manifest may carry a ``validation`` block, written by
``benchmarks/real_accuracy.py --record`` (never by hand)::

    "validation": {
        "metric": "mean Dice over the 32 structures (background excluded), mean over subjects",
        "validation": {"subjects": ["ixi012", ...], "mean_dice": 0.83},   # used for selection
        "scored": {"subjects": ["ixi015", ...], "mean_dice": 0.81,         # held out
                   "per_subject": {"ixi015": 0.82, ...}},
        "measured": "2026-11-30T15:00:00+00:00", "command": "..."
    }

:func:`accuracy_warning` gives the one sentence that every report, the dseg sidecar and the log
show when the model in use has no such block or scores below :data:`ACCURACY_BAR`.
"""

from __future__ import annotations

#: Mean Dice on held-out real scans below which outputs carry a warning.
ACCURACY_BAR = 0.7


def measured_accuracy(manifest: dict) -> float | None:
    """The held-out ("scored") mean Dice recorded in ``manifest``, else None."""
    block = manifest.get("validation")
    if not isinstance(block, dict):
        return None
    scored = block.get("scored")
    value = scored.get("mean_dice") if isinstance(scored, dict) else None
    return float(value) if isinstance(value, (int, float)) and value == value else None


def accuracy_warning(manifest: dict) -> str | None:
    """One sentence for users when the model's accuracy is unknown or below the bar, else None."""
    name = manifest.get("name", "the model")
    dice = measured_accuracy(manifest)
    if dice is None:
        return (f"Model {name} carries no measured accuracy on held-out real scans: treat its "
                f"segmentations and volumes as unvalidated.")
    if dice < ACCURACY_BAR:
        return (f"Model {name} scored a mean Dice of {dice:.2f} on held-out real scans, below "
                f"{ACCURACY_BAR:.2f}: its segmentations and volumes are not accurate enough for analysis.")
    return None


def accuracy_summary(manifest: dict) -> dict | None:
    """The sidecar's ``ModelAccuracy`` entry: metric, held-out and validation mean Dice, subjects."""
    block = manifest.get("validation")
    if not isinstance(block, dict):
        return None
    out = {"Metric": block.get("metric")}
    for key, label in (("scored", "HeldOut"), ("validation", "Validation")):
        part = block.get(key)
        if isinstance(part, dict):
            out[label] = {"MeanDice": part.get("mean_dice"), "Subjects": part.get("subjects")}
    return out
