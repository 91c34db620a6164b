"""The VQ-VAE recipe on fake IDX MNIST: presets, the run folder, exact resume, loading, one-line errors."""

import json

import pytest
import torch
from PIL import Image

from genkit.cli import run_main
from genkit.data.images import to_float
from genkit.recipes import vqvae

N_TRAIN, N_TEST = 64, 24


def _squares(n, generator):
    """28x28 uint8 images: a bright 8x8 square at a random place on a dark background."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    corners = torch.randint(0, 21, (n, 2), generator=generator)
    for img, (i, j) in zip(images, corners.tolist()):
        img[i : i + 8, j : j + 8] = 255
    return images


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, fake_mnist):
    g = torch.Generator().manual_seed(0)
    return fake_mnist(tmp_path_factory.mktemp("data"), _squares(N_TRAIN, g), _squares(N_TEST, g))


FAST = ["--train.batch-size", "16", "--train.log-every", "2", "--train.checkpoint-every", "3",
        "--train.sample-every", "3", "--train.no-tensorboard", "--train.no-progress", "--device", "cpu",
        "--model.channels", "4", "8", "--model.dim", "4", "--quantizer.num-codes", "16", "--eval.n-grid", "10",
        "--data.no-download"]


def _run(data_root, out, *extra):
    return run_main(vqvae.main, ["--preset", "mnist", "--data.root", str(data_root), "--out", str(out), *FAST, *extra])


def test_presets_resolve_and_flags_override(capsys):
    for preset, dataset, dim in (("mnist", "mnist", 16), ("cifar10", "cifar10", 32)):
        assert run_main(vqvae.main, ["--preset", preset, "--dry-run", "--quantizer.gradient", "rotation",
                                     "--quantizer.codebook", "linear", "--quantizer.num-codes", "64"]) == 0
        cfg = json.loads(capsys.readouterr().out)
        assert cfg["data"]["dataset"] == dataset and cfg["model"]["dim"] == dim
        q = cfg["quantizer"]
        assert (q["gradient"], q["codebook"], q["num_codes"], q["commitment_weight"]) == ("rotation", "linear", 64, 0.25)


def test_tiny_run_writes_the_run_folder_resumes_exactly_and_loads(data_root, tmp_path, same_checkpoints):
    rotation_simvq = ["--quantizer.gradient", "rotation", "--quantizer.codebook", "linear"]
    out = tmp_path / "run"
    assert _run(data_root, out, "--train.steps", "3", *rotation_simvq) == 0
    assert _run(data_root, out, "--train.steps", "6", *rotation_simvq) == 0  # same --out: resumes at step 3
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoints", "samples", "eval.json"}
    assert json.loads((out / "config.json").read_text())["recipe"] == "vqvae"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [2, 3, 4, 6]  # step 3 ended the first run; nothing repeated
    assert {"loss/model", "recon_mse", "codebook_loss", "commitment_loss", "perplexity", "code_usage"} <= set(logged[-1])
    result = json.loads((out / "eval.json").read_text())
    assert result["step"] == 6 and result["n_test"] == N_TEST and result["weights"] == "ema"
    assert result["num_codes"] == 16 and result["codes_used"] + result["dead_codes"] == 16
    assert 0 < result["code_usage"] <= 1 and 1 <= result["perplexity"] <= result["codes_used"]
    assert result["test_psnr"] == pytest.approx(vqvae.psnr(result["test_recon_mse"]))
    # 10 test images over their reconstructions: rows of 8 -> 4 rows of 30 px (28 + 2 padding) + 2
    grid = Image.open(out / "samples" / "step_00000006.png")
    assert grid.size == (8 * 30 + 2, 4 * 30 + 2)
    # the same 6 steps without the stop: bit-identical weights, optimizer and data position
    straight = tmp_path / "straight"
    assert _run(data_root, straight, "--train.steps", "6", *rotation_simvq) == 0
    same_checkpoints(out, straight)
    # loading: decoding the indices gives the reconstruction (the SimVQ map is applied on lookup)
    loaded = vqvae.load_vqvae(out)
    assert loaded.step == 6 and loaded.shape == (1, 28, 28) and loaded.config.quantizer.codebook == "linear"
    from genkit.data.images import load_images

    x = to_float(load_images("mnist", root=data_root, split="test", download=False)[:4])
    with torch.no_grad():
        o = loaded.net(x)
        assert torch.allclose(loaded.net.decode_indices(o.quantizer.indices), o.reconstruction, atol=1e-6)


def test_bad_input_is_one_line_exit_2(data_root, tmp_path, capsys):
    assert run_main(vqvae.main, ["--data.dataset", "svhn", "--dry-run"]) == 2
    assert "unknown dataset 'svhn'" in capsys.readouterr().err
    assert _run(data_root, tmp_path / "a", "--quantizer.num-codes", "0") == 2
    err = capsys.readouterr().err
    assert "--quantizer.num-codes" in err and err.count("\n") == 1
    # a run folder trained with other quantizer settings is not resumed under these
    assert _run(data_root, tmp_path / "b", "--train.steps", "1") == 0
    capsys.readouterr()
    assert _run(data_root, tmp_path / "b", "--train.steps", "2", "--quantizer.gradient", "rotation") == 2
    err = capsys.readouterr().err
    assert "quantizer.gradient: 'ste' -> 'rotation'" in err and err.count("\n") == 1
