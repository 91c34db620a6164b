"""Feature extractors: offline Inception weights handling, Inception's input contract."""

import pytest
import torch

from genkit.errors import GenkitError
from genkit.eval.features import FeatureExtractor, InceptionFeatures, inception_weights_path

pytest.importorskip("torch_fidelity")
WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


def test_missing_weights_in_hub_cache_is_one_line_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: nothing may be downloaded
    with pytest.raises(GenkitError) as info:
        InceptionFeatures()
    message = str(info.value)
    assert "\n" not in message and WEIGHTS in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "https://" in message
    assert not any(tmp_path.iterdir())  # no download was started


def test_missing_explicit_weights_file(tmp_path):
    with pytest.raises(GenkitError, match="nowhere.pth not found") as info:
        InceptionFeatures(tmp_path / "nowhere.pth")
    assert "\n" not in str(info.value)


def test_weights_that_are_not_a_plain_state_dict_are_refused(tmp_path):
    bad = tmp_path / WEIGHTS
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(GenkitError, match="cannot load Inception weights"):
        InceptionFeatures(bad)
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(GenkitError, match="fc.weight"):
        InceptionFeatures(bad)


class FakeInception(torch.nn.Module):
    """Stands in for torch-fidelity's network: checks how it is called; features = channel means."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None):
        super().__init__()
        assert features_list == ["2048"] and feature_extractor_weights_path is not None  # never downloads
        self.weights = feature_extractor_weights_path

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3  # torch-fidelity's input contract
        return (x.float().mean(dim=(2, 3)).repeat(1, 683)[:, :2048],)


def test_inception_wrapper_contract(tmp_path, monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    monkeypatch.setattr(fe, "FeatureExtractorInceptionV3", FakeInception)
    weights = tmp_path / WEIGHTS
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, weights)
    extractor = InceptionFeatures(weights)
    assert extractor.net.weights == str(weights)
    assert isinstance(extractor, FeatureExtractor) and extractor.dim == 2048
    assert extractor.name.startswith("inception-v3@")  # not the published weights: named by their digest
    g = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (3, 1, 5, 7), generator=g, dtype=torch.uint8)
    f = extractor(gray)
    assert f.shape == (3, 2048) and f.dtype == torch.float32
    assert torch.equal(f, extractor(gray.repeat(1, 3, 1, 1)))  # grayscale is repeated to RGB
    with pytest.raises(GenkitError, match="uint8"):
        extractor(gray.float())
    with pytest.raises(GenkitError, match="1 or 3 channels"):
        extractor(torch.zeros(1, 2, 8, 8, dtype=torch.uint8))


def test_hub_cache_file_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / WEIGHTS
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert inception_weights_path() == cached


@pytest.mark.slow
def test_real_network_with_random_weights(tmp_path):
    """torch-fidelity's Inception (random weights, no download) through the wrapper: ~10 s per image on CPU."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("random", ["2048"])
    torch.save(net.state_dict(), tmp_path / WEIGHTS)
    extractor = InceptionFeatures(tmp_path / WEIGHTS)
    gray = torch.randint(0, 256, (1, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    f = extractor(gray)
    assert f.shape == (1, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all() and f.std() > 0
    assert torch.equal(f, extractor(gray.repeat(1, 3, 1, 1)))


def test_inception_name_says_which_weights(tmp_path, monkeypatch):
    """The published weights (SHA-256 prefix in the published file name, as torch.hub checks) are plain
    "inception-v3"; any other file is named by its digest, so cached reference statistics differ."""
    import hashlib

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    from genkit.eval import features

    monkeypatch.setattr(fe, "FeatureExtractorInceptionV3", FakeInception)
    mine, other = tmp_path / "mine.pth", tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 2)}, mine)
    torch.save({"fc.weight": torch.ones(3, 2)}, other)
    names = {InceptionFeatures(p).name for p in (mine, other)}
    assert len(names) == 2 and all(n.startswith("inception-v3@") for n in names)
    prefix = hashlib.sha256(mine.read_bytes()).hexdigest()[:8]
    monkeypatch.setattr(features, "_inception_source", lambda: ("https://x", f"weights-inception-{prefix}.pth"))
    assert InceptionFeatures(mine).name == "inception-v3"
    assert InceptionFeatures(other).name.startswith("inception-v3@")
