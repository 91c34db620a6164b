"""The VAE recipe on a fake IDX MNIST: the run folder, eval.json's bound, exact resume, presets, bad input."""

import json
import math

import pytest
import torch

from genkit.cli import run_main
from genkit.distributions.vmf import kl_vmf_uniform
from genkit.recipes import vae

N_TRAIN, N_TEST = 120, 40


def _strokes(n, generator):
    """28x28 images: a bright horizontal or vertical bar on black, at a random place (MNIST-like ink)."""
    x = torch.zeros(n, 28, 28, dtype=torch.uint8)
    pos = torch.randint(4, 24, (n,), generator=generator)
    for i in range(n):
        if i % 2:
            x[i, pos[i] - 2 : pos[i] + 2, 4:24] = 255
        else:
            x[i, 4:24, pos[i] - 2 : pos[i] + 2] = 255
    return x


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, fake_mnist):
    g = torch.Generator().manual_seed(0)
    return fake_mnist(tmp_path_factory.mktemp("data"), _strokes(N_TRAIN, g), _strokes(N_TEST, g))


def fast(data_root, steps):
    return ["--preset", "mnist", "--data.root", str(data_root), "--data.no-download", "--device", "cpu",
            "--train.steps", str(steps), "--train.batch-size", "20", "--train.log-every", "5",
            "--train.checkpoint-every", "10", "--train.sample-every", "10", "--train.no-tensorboard",
            "--train.no-progress", "--model.hidden", "16", "--model.latent-dim", "3", "--eval.samples", "8",
            "--eval.batch-size", "16"]


@pytest.fixture(scope="module")
def trained_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "vae"
    assert run_main(vae.main, [*fast(data_root, 20), "--out", str(out)]) == 0
    return out


def test_run_folder_and_eval_json(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoints", "samples", "eval.json"}
    card = json.loads((trained_run / "config.json").read_text())
    assert card["recipe"] == "vae" and card["shape"] == [1, 28, 28] and card["model"]["latent"] == "vmf"
    assert card["model"]["kappa"] == 20.0 and card["objective"]["samples"] == 1
    samples = {p.name for p in (trained_run / "samples").iterdir()}
    assert samples == {f"{kind}_{s:08d}.png" for kind in ("recon", "prior") for s in (10, 20)}
    result = json.loads((trained_run / "eval.json").read_text())
    assert result["step"] == 20 and result["n_test"] == N_TEST and result["iwae_samples"] == 8
    assert result["weights"] == "ema" and result["latent"] == "vmf" and result["likelihood"] == "bernoulli"
    assert "bound" in result["test_bound_note"] and "binarised" in result["test_bound_data"]
    # a Bernoulli log-probability of 784 binary pixels: 0 < NLL, and bits/dim is NLL / (784 ln 2) (no offset)
    assert result["test_nll_bound_nats"] > 0 and result["test_nll_bound_nats_stderr"] > 0
    assert result["test_nll_bound_bpd"] == pytest.approx(result["test_nll_bound_nats"] / (784 * math.log(2)))
    logged = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [5, 10, 15, 20]
    kl = float(kl_vmf_uniform(3, torch.tensor(20.0, dtype=torch.float64)))
    assert all(m["kl"] == pytest.approx(kl, rel=1e-5) for m in logged)  # the vMF KL is a constant (SPEC 5(a))
    assert all(m["elbo"] == pytest.approx(-(m["recon"] + m["kl"]), rel=1e-5) for m in logged)
    assert logged[-1]["recon"] < logged[0]["recon"]


def test_resume_gives_the_uninterrupted_run(data_root, trained_run, tmp_path, same_checkpoints):
    out = tmp_path / "resumed"
    assert run_main(vae.main, [*fast(data_root, 10), "--out", str(out)]) == 0
    assert run_main(vae.main, [*fast(data_root, 20), "--out", str(out)]) == 0
    same_checkpoints(out, trained_run)


def test_presets_and_bad_input_are_one_line(capsys):
    for preset, dataset, latent in (("mnist", "mnist", "vmf"), ("fashion-mnist", "fashion-mnist", "vmf"),
                                    ("cifar10", "cifar10", "gaussian")):
        assert run_main(vae.main, ["--preset", preset, "--dry-run"]) == 0
        cfg = json.loads(capsys.readouterr().out)
        assert cfg["data"]["dataset"] == dataset and cfg["model"]["latent"] == latent
    m = vae.VAEConfig().model  # the defaults are the post's (SPEC 5(d)): 4-d vMF code, kappa 20, Dense(256), BCE
    assert (m.latent, m.latent_dim, m.kappa, m.hidden, m.likelihood) == ("vmf", 4, 20.0, 256, "bernoulli")
    for flags, words in ((["--model.latent-dim", "1"], "--model.latent-dim must be >= 2"),
                         (["--model.kappa", "0"], "--model.kappa"),
                         (["--objective.samples", "0"], "--objective.samples must be >= 1"),
                         (["--data.dataset", "svhn"], "unknown dataset 'svhn'")):
        assert run_main(vae.main, ["--preset", "mnist", *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
