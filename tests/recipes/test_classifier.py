"""The classifier recipe: labelled batches, a tiny run that learns, its features for FID-C."""

import json
import re

import numpy as np
import pytest
import torch

from genkit.cli import run_main
from genkit.errors import GenkitError
from genkit.eval.features import ClassifierFeatures
from genkit.eval.fid import FeatureStats, frechet_distance, image_stats
from genkit.recipes import classifier

N_TRAIN, N_TEST = 256, 200


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, brightness_mnist):
    return brightness_mnist(tmp_path_factory.mktemp("data"), N_TRAIN, N_TEST, torch.Generator().manual_seed(0))


FAST = ["--train.steps", "30", "--train.batch-size", "32", "--train.log-every", "10", "--train.checkpoint-every", "15",
        "--train.ema-decay", "0.9", "--train.no-tensorboard", "--train.no-progress", "--device", "cpu",
        "--model.channels", "8", "16", "--model.feature-dim", "16", "--data.no-download"]


@pytest.fixture(scope="module")
def trained_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "classifier"
    code = run_main(classifier.main, ["--preset", "mnist", "--data.root", str(data_root), "--out", str(out), *FAST])
    assert code == 0
    return out


def test_labelled_stream_labels_follow_their_images_and_resume():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    labels = torch.arange(40) * 10
    stream = classifier.LabelledStream(images, labels, 8, seed=1)
    seen = []
    for _ in range(12):  # 5 batches per epoch: crosses two epoch boundaries
        x, y = next(stream)
        index = torch.round((x[:, 0, 0, 0] + 1) * 127.5).long()
        assert torch.equal(y, index * 10)
        seen.append(y)
    assert sorted(torch.cat(seen[:5]).tolist()) == sorted(labels.tolist())  # one epoch = every image once
    state = stream.state_dict()
    resumed = classifier.LabelledStream(images, labels, 8, seed=1)
    resumed.load_state_dict(state)
    for _ in range(4):
        assert all(torch.equal(a, b) for a, b in zip(next(stream), next(resumed)))
    with pytest.raises(GenkitError, match="one label per image"):
        classifier.LabelledStream(images, labels[:5], 8, seed=1)


def test_dry_run_and_presets(capsys):
    for preset, dataset in (("mnist", "mnist"), ("fashion-mnist", "fashion-mnist"), ("cifar10", "cifar10")):
        assert run_main(classifier.main, ["--preset", preset, "--dry-run"]) == 0
        cfg = json.loads(capsys.readouterr().out)
        assert cfg["data"]["dataset"] == dataset and cfg["train"]["batch_size"] == 256 and cfg["optim"]["lr"] == 1e-3
    assert run_main(classifier.main, ["--data.dataset", "svhn"]) == 2
    assert "unknown dataset 'svhn'" in capsys.readouterr().err


def test_tiny_run_learns_and_writes_the_run_folder(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoints", "eval.json"}
    assert json.loads((trained_run / "config.json").read_text())["recipe"] == "classifier"
    result = json.loads((trained_run / "eval.json").read_text())
    assert result["step"] == 30 and result["n_test"] == N_TEST and result["weights"] == "ema"
    # Chance on the balanced held-out split is 0.5 (sd sqrt(.25 / 200) = 0.035); 0.9 is 11 sd above it,
    # while the task is separable (see conftest.brightness_task).
    assert result["test_accuracy"] >= 0.9, result
    logged = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [10, 20, 30] and "train_accuracy" in logged[-1]
    assert logged[-1]["loss/model"] < logged[0]["loss/model"]


def test_classifier_features_and_fid_c(trained_run, data_root):
    from genkit.data.images import load_images

    features = ClassifierFeatures(trained_run)
    assert re.fullmatch(r"classifier:mnist@[0-9a-f]{10}", features.name) and features.dim == 16 and features.step == 30
    # the name says which weights: FID-C reference statistics are cached under it
    earlier = min((trained_run / "checkpoints").glob("step_*"))
    assert ClassifierFeatures(earlier).name != features.name and earlier.name != "step_00000030"
    assert ClassifierFeatures(trained_run).name == features.name
    train = load_images("mnist", root=data_root, split="train", download=False)
    f = features(train[:5])
    assert f.shape == (5, 16) and f.dtype == torch.float32
    # a checkpoint folder works as well and gives the same features
    step_dir = trained_run / "checkpoints" / "step_00000030"
    assert torch.equal(ClassifierFeatures(step_dir)(train[:5]), f)
    a, b = image_stats(train, features, batch_size=64), image_stats(train, features, batch_size=100)
    fid_self = frechet_distance(a.mean(), a.cov(), b.mean(), b.cov())
    assert fid_self < 1e-8 * np.trace(a.cov())
    # the features separate the classes: FID-C between the classes dwarfs the one between the splits
    test = load_images("mnist", root=data_root, split="test", download=False)
    t = image_stats(test, features, batch_size=100)
    halves = [FeatureStats(), FeatureStats()]
    for k in (0, 1):
        halves[k].update(features(train[k::2]))  # conftest.brightness_task alternates the labels
    between_splits = frechet_distance(a.mean(), a.cov(), t.mean(), t.cov())
    between_classes = frechet_distance(halves[0].mean(), halves[0].cov(), halves[1].mean(), halves[1].cov())
    assert between_classes > 100 * between_splits


def test_classifier_features_errors(trained_run, tmp_path):
    features = ClassifierFeatures(trained_run)
    with pytest.raises(GenkitError, match="trained on 1x28x28 images, got 3x32x32"):
        features(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(GenkitError, match="uint8"):
        features(torch.zeros(2, 1, 28, 28))
    with pytest.raises(GenkitError, match="no classifier checkpoint"):
        ClassifierFeatures(tmp_path)


def _image_folder(root, classes_per_split, generator):
    """PNG folders ``root/<split>/<class>/<i>.png`` of 8x8 RGB noise: cat pixels in {0..99}, dog in
    {156..255}, bird in {100..155} (separable by the mean)."""
    from PIL import Image

    low = {"cat": 0, "bird": 100, "dog": 156}
    for split, (classes, n) in classes_per_split.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(low[c], low[c] + 100 if c != "bird" else 156, (8, 8, 3), generator=generator)
                Image.fromarray(pixels.to(torch.uint8).numpy()).save(root / split / c / f"{i}.png")


def test_imagefolder_test_split_is_scored_against_the_training_classes(tmp_path, capsys):
    """A test folder holding only `dog` is labelled 1 (train classes ['cat', 'dog']), not 0: the trained
    classifier scores near 100% on it, where its own numbering would give near 0%. A test class that the
    training images lack is refused before training."""
    g = torch.Generator().manual_seed(0)
    _image_folder(tmp_path / "data", {"train": (("cat", "dog"), 32), "test": (("dog",), 16)}, g)
    # (FAST[:-1]: without --data.no-download, which is for torchvision sets)
    flags = [*FAST[:-1], "--data.dataset", "imagefolder", "--data.root", str(tmp_path / "data")]
    assert run_main(classifier.main, [*flags, "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["n_test"] == 16 and result["test_accuracy"] >= 0.9, result

    _image_folder(tmp_path / "data", {"test": (("bird",), 2)}, g)
    assert run_main(classifier.main, [*flags, "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert "classes ['bird'] that ['cat', 'dog'] lacks" in err and err.count("\n") == 1
    assert not (tmp_path / "run2" / "checkpoints").exists()
