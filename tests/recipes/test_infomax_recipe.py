"""The infomax recipe: presets, a tiny run on fake MNIST (run folder, eval.json, resume), load_encoder, errors."""

import json

import pytest
import torch

from genkit.cli import parse_config, run_main
from genkit.data.images import load_images, load_labels, to_float
from genkit.errors import GenkitError
from genkit.recipes import infomax

N_TRAIN, N_TEST = 128, 60

TINY = ["--train.batch-size", "16", "--train.log-every", "3", "--train.checkpoint-every", "3",
        "--train.ema-decay", "0.9", "--train.no-tensorboard", "--train.no-progress", "--device", "cpu",
        "--model.channels", "4", "8", "--model.z-dim", "8", "--model.critic-hidden", "16", "--data.no-download",
        "--eval.k", "5", "--eval.queries", "3"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, brightness_mnist):
    return brightness_mnist(tmp_path_factory.mktemp("data"), N_TRAIN, N_TEST, torch.Generator().manual_seed(0))


def run(argv, capsys):
    code = run_main(infomax.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_presets_resolve_to_the_reference_setup(capsys):
    code, out, _ = run(["--preset", "cifar10", "--dry-run"], capsys)
    cfg = json.loads(out)
    assert code == 0 and cfg["data"]["dataset"] == "cifar10"
    assert (cfg["dim"]["alpha"], cfg["dim"]["beta"], cfg["dim"]["gamma"]) == (0.5, 1.5, 0.01)  # SPEC §7(d)
    assert cfg["model"]["z_dim"] == 256 and cfg["model"]["channels"] == [64, 128, 256]
    assert cfg["train"]["batch_size"] == 64 and cfg["optim"]["lr"] == 1e-3 and cfg["dim"]["global_input"] == "code"
    code, out, _ = run(["--preset", "mnist", "--dry-run", "--dim.global-input", "image_embedding"], capsys)
    cfg = json.loads(out)
    assert code == 0 and cfg["data"]["dataset"] == "mnist" and cfg["dim"]["global_input"] == "image_embedding"


@pytest.mark.parametrize("flags, message", [
    (["--data.dataset", "svhn"], "unknown dataset 'svhn'"),
    (["--train.batch-size", "1"], "--train.batch-size must be >= 2"),
    (["--dim.gamma", "-1"], "gamma must be finite and >= 0"),
    (["--model.channels", "4", "4", "4", "4", "4"], "28x28 images are too small for 5 pooling blocks"),
])
def test_bad_input_is_one_line(flags, message, data_root, tmp_path, capsys):
    code, _, err = run(["--data.root", str(data_root), "--out", str(tmp_path / "run"), *TINY, *flags], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tiny_run_writes_the_run_folder_resumes_and_loads(data_root, tmp_path, capsys, same_checkpoints):
    argv = ["--preset", "mnist", "--data.root", str(data_root), *TINY]
    code, stdout, err = run([*argv, "--out", str(tmp_path / "a"), "--train.steps", "6"], capsys)
    assert code == 0, err
    out = tmp_path / "a"
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoints", "samples", "eval.json"}
    card = json.loads((out / "config.json").read_text())
    assert card["recipe"] == "infomax" and card["shape"] == [1, 28, 28]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [3, 6]
    assert {"loss/model", "loss_global", "loss_local", "prior_kl", "js_global", "js_local", "code_std"} <= set(logged[-1])
    step_dir = out / "checkpoints" / "step_00000006"
    assert {"encoder", "global_critic", "local_critic"} <= {p.name.split(".")[0] for p in step_dir.glob("*.safetensors")}
    assert {p.name for p in (out / "samples").iterdir()} == {"neighbours_cosine.png", "neighbours_euclidean.png"}
    ev = json.loads((out / "eval.json").read_text())
    assert ev["step"] == 6 and ev["weights"] == "ema" and ev["n_train"] == N_TRAIN and ev["n_test"] == N_TEST
    assert ev["feature_dim"] == 8 and ev["knn_k"] == 5 and ev["chance_accuracy"] == 0.5
    for key in ("knn_cosine_accuracy", "knn_euclidean_accuracy", "linear_probe_accuracy"):
        assert 0.0 <= ev[key] <= 1.0
    assert "k-NN (cosine, k=5) accuracy" in stdout

    # resume: 6 + 3 steps equal 9 steps in one go, bit for bit
    assert run([*argv, "--out", str(out), "--train.steps", "9"], capsys)[0] == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [3, 6, 9]
    assert json.loads((out / "eval.json").read_text())["step"] == 9
    assert run([*argv, "--out", str(tmp_path / "b"), "--train.steps", "9"], capsys)[0] == 0
    same_checkpoints(tmp_path / "a", tmp_path / "b")
    # a resumed run may not change the objective
    code, _, err = run([*argv, "--out", str(out), "--train.steps", "12", "--dim.beta", "2"], capsys)
    assert code == 2 and err.count("\n") == 1, err

    # the trained encoder comes back from the run folder and gives the codes the evaluation used
    encoder = infomax.load_encoder(out)
    images = load_images("mnist", root=data_root, split="test", download=False)
    codes = infomax.encode(encoder, images, batch_size=7, device=torch.device("cpu"))
    assert codes.shape == (N_TEST, 8)
    assert torch.allclose(codes[:5], encoder.features(to_float(images[:5])), atol=1e-6)
    assert abs(float(codes.std()) - json.loads((out / "eval.json").read_text())["code_std"]) < 1e-6
    with pytest.raises(GenkitError, match="not a run folder"):
        infomax.load_encoder(tmp_path)


def test_eval_scores_the_untrained_encoder_as_a_baseline(tmp_path, capsys, fake_mnist, two_brightness_classes):
    """eval.json's untrained_* fields are the probes of the seed's initial encoder, not of the trained one.

    Labels drawn at random, independent of the images: the probes then score near chance, differently for
    any two encoders, so equal scores identify the encoder (brightness labels give 1.0 to every encoder)."""
    g = torch.Generator().manual_seed(1)
    (train, _), (test, _) = two_brightness_classes(N_TRAIN, g), two_brightness_classes(N_TEST, g)
    labels = [torch.randint(0, 2, (n,), generator=g) for n in (N_TRAIN, N_TEST)]
    data_root = fake_mnist(tmp_path / "data", train, test, *labels)
    argv = ["--preset", "mnist", "--data.root", str(data_root), *TINY, "--train.steps", "6"]
    code, stdout, err = run([*argv, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    ev = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert "untrained encoder: k-NN" in stdout

    cfg = parse_config(infomax.InfoMaxConfig, infomax.RECIPE, argv)
    init = infomax.untrained_encoder(cfg, (1, 28, 28))
    trained = infomax.load_encoder(tmp_path / "a")
    state = trained.state_dict()
    assert any(not torch.equal(v, state[n]) for n, v in init.state_dict().items())  # training moved the weights
    train = load_images("mnist", root=data_root, split="train", download=False)
    test = load_images("mnist", root=data_root, split="test", download=False)
    train_y, _ = load_labels("mnist", root=data_root, split="train")
    test_y, _ = load_labels("mnist", root=data_root, split="test")
    cpu = torch.device("cpu")
    for prefix, encoder in (("untrained_", init), ("", trained)):
        codes = [infomax.encode(encoder, x, batch_size=50, device=cpu) for x in (train, test)]
        scores, _ = infomax.probe_scores(codes[0], train_y, codes[1], test_y, k=5, device=cpu)
        assert {f"{prefix}{name}": value for name, value in scores.items()} == {
            f"{prefix}{name}": ev[f"{prefix}{name}"] for name in scores}

    code, _, err = run([*argv, "--out", str(tmp_path / "b"), "--eval.no-baseline"], capsys)
    assert code == 0, err
    assert not any(key.startswith("untrained_") for key in json.loads((tmp_path / "b" / "eval.json").read_text()))
