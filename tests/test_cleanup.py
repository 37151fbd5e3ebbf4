"""Connected-component clean-up of posteriors (l2s_pipelines.inference.cleanup) and its switch in
the model manifest."""

import numpy as np
import pytest
import torch

from l2s_pipelines.errors import ModelError
from l2s_pipelines.inference.cleanup import clean_posteriors, largest_component, topology_groups
from l2s_pipelines.labels import LabelTable


def _posteriors(label_map: np.ndarray, table: LabelTable, confidence: float = 0.9) -> torch.Tensor:
    """One-hot-ish posteriors (K, *shape): ``confidence`` on the label, the rest spread evenly."""
    k = len(table)
    idx = torch.from_numpy(np.vectorize(table.index_of)(label_map))
    post = torch.full((k, *label_map.shape), (1 - confidence) / (k - 1))
    post.scatter_(0, idx[None], confidence)
    return post


def test_groups_follow_the_table():
    table = LabelTable.default()
    groups = topology_groups(table)
    assert [table.index_of(4), table.index_of(5)] in groups  # lateral ventricle with its inferior horn
    assert all(table.index_of(24) not in g for g in groups)  # extracerebral CSF is never cleaned
    assert len(groups) == 27


def test_largest_component_uses_faces():
    mask = np.zeros((5, 5, 5), bool)
    mask[0, 0, 0] = mask[1, 1, 0] = True  # diagonal neighbours: two components
    mask[3:5, 3:5, 3:5] = True
    assert largest_component(mask).sum() == 8
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_islands_of_a_structure_and_of_the_brain_are_removed(dtype):
    table = LabelTable.default()
    seg = np.zeros((20, 20, 20), np.int16)
    seg[4:14, 4:14, 4:14] = 2          # white matter body
    seg[6:9, 6:9, 6:9] = 17            # the hippocampus, inside it
    seg[11, 11, 11] = 17               # a one-voxel hippocampus island (inside the white matter)
    seg[17:19, 17:19, 17:19] = 2       # a white-matter island away from the brain (8 voxels)
    post = _posteriors(seg, table)
    post[:, 11, 11, 11] = 0.0
    post[[table.index_of(17), table.index_of(2), 0], 11, 11, 11] = torch.tensor([0.6, 0.3, 0.1])
    post = post.to(dtype)
    out = clean_posteriors(post.clone(), table)
    labels = np.asarray(table.values)[out.argmax(0).numpy()]
    assert (labels[6:9, 6:9, 6:9] == 17).all()
    assert labels[11, 11, 11] == 2                      # the island went to the next best label
    assert (labels[17:19, 17:19, 17:19] == 0).all()     # outside the largest body: background
    assert (labels[seg == 2][: 10] == 2).all()
    assert torch.allclose(out.float().sum(0), torch.ones(20, 20, 20), atol=1e-2)
    untouched = clean_posteriors(post.clone(), table, steps=())
    assert torch.equal(untouched, post)
    with pytest.raises(ValueError, match="unknown clean-up step"):
        clean_posteriors(post.clone(), table, steps=("smooth",))


def test_manifest_switch(tmp_path):
    from l2s_pipelines.inference.segmenter import Segmenter
    from l2s_pipelines.io.checkpoint import load_model_package

    from l2s_pipelines.io.checkpoint import default_model_dir

    model, manifest = load_model_package(default_model_dir())
    manifest = dict(manifest, inference=dict(manifest["inference"], cleanup=["structures", "brain"]))
    assert Segmenter(model, manifest, torch.device("cpu")).cleanup == ("structures", "brain")
    manifest["inference"]["cleanup"] = ["smooth"]
    with pytest.raises(ModelError, match="inference.cleanup"):
        Segmenter(model, manifest, torch.device("cpu"))
