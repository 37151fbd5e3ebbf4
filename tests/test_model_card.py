"""The model card: a package's measured accuracy and the warning users see."""

from __future__ import annotations

from l2s_pipelines.model_card import ACCURACY_BAR, accuracy_summary, accuracy_warning, measured_accuracy


def _manifest(scored=None):
    m = {"name": "m"}
    if scored is not None:
        m["validation"] = {"metric": "mean Dice", "validation": {"subjects": ["a"], "mean_dice": 0.9},
                           "scored": {"subjects": ["b", "c"], "mean_dice": scored}}
    return m


def test_no_validation_block_is_flagged():
    assert measured_accuracy(_manifest()) is None
    assert "no measured accuracy" in accuracy_warning(_manifest())
    assert accuracy_summary(_manifest()) is None


def test_below_the_bar_is_flagged_with_its_score():
    note = accuracy_warning(_manifest(ACCURACY_BAR - 0.01))
    assert note and f"{ACCURACY_BAR - 0.01:.2f}" in note and "below" in note


def test_at_or_above_the_bar_is_silent_and_summarised():
    assert accuracy_warning(_manifest(ACCURACY_BAR)) is None
    summary = accuracy_summary(_manifest(0.85))
    assert summary["HeldOut"] == {"MeanDice": 0.85, "Subjects": ["b", "c"]}
    assert summary["Validation"]["MeanDice"] == 0.9


def test_malformed_blocks_count_as_unmeasured():
    for block in ("0.9", {"scored": "x"}, {"scored": {"mean_dice": "0.9"}}, {"scored": {"mean_dice": float("nan")}}):
        assert measured_accuracy({"validation": block}) is None
