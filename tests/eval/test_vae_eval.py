"""`python -m genkit.eval.nll --run DIR` and `python -m genkit.eval.fid --run DIR` on tiny VAE runs."""

import json

import pytest

from genkit.cli import run_main
from genkit.eval import fid, nll
from genkit.eval.runs import load_eval_run
from genkit.recipes import classifier, vae


@pytest.fixture(scope="module")
def vae_runs(tmp_path_factory, image_folder):
    """A Gaussian-likelihood IWAE (M = 3) and a Bernoulli vMF-VAE on the shared 8x8 ImageFolder, and a classifier."""
    runs = tmp_path_factory.mktemp("vae-runs")
    common = ["--data.dataset", "imagefolder", "--data.root", str(image_folder), "--device", "cpu",
              "--train.no-tensorboard", "--train.no-progress", "--train.batch-size", "8", "--train.steps", "6",
              "--train.sample-every", "0"]
    small = ["--model.hidden", "16", "--model.latent-dim", "3", "--eval.samples", "4", "--eval.batch-size", "8"]
    assert run_main(vae.main, [*common, *small, "--out", str(runs / "gauss"), "--model.latent", "gaussian",
                               "--model.likelihood", "gaussian", "--model.learn-scale", "--model.arch", "conv",
                               "--model.channels", "4", "8", "--objective.samples", "3"]) == 0
    assert run_main(vae.main, [*common, *small, "--out", str(runs / "bern")]) == 0
    assert run_main(classifier.main, [*common, "--out", str(runs / "clf"), "--model.channels", "8", "16",
                                      "--model.feature-dim", "16"]) == 0
    return runs


def test_gaussian_vae_run_eval_json_is_a_bpd_bound(vae_runs):
    result = json.loads((vae_runs / "gauss" / "eval.json").read_text())
    assert result["likelihood"] == "gaussian" and result["train_samples"] == 3 and result["n_test"] == 32
    assert "dequantized" in result["test_bound_data"]
    # bits/dim of 8-bit data with the offset: nats = bpd * D ln 2 (D = 3 * 8 * 8)
    assert result["test_nll_bound_nats"] == pytest.approx(result["test_nll_bound_bpd"] * 192 * 0.6931471805599453)


def test_nll_cli_on_a_vae_run_is_the_iwae_bound(vae_runs, capsys):
    run = vae_runs / "gauss"
    loaded = load_eval_run(run, device="cpu")
    assert loaded.density().is_bound and loaded.step == 6
    assert run_main(nll.main, ["--run", str(run), "--n", "6", "--batch-size", "3", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["nll_density_is_bound"] is True and printed["nll_n"] == 6 and printed["nll_step"] == 6
    assert printed["nll_iwae_samples"] == 4  # the run's --eval.samples
    assert printed["nll_bpd"] > 0 and json.loads((run / "eval.json").read_text())["nll_bpd"] == printed["nll_bpd"]
    # a Bernoulli VAE scores binarised images: genkit.eval.nll refuses it in one line
    assert run_main(nll.main, ["--run", str(vae_runs / "bern"), "--n", "4", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--model.likelihood gaussian" in err


def test_fid_cli_on_a_vae_run(vae_runs, image_folder, tmp_path, capsys):
    for name in ("gauss", "bern"):
        argv = ["--run", str(vae_runs / name), "--features", "classifier", "--classifier", str(vae_runs / "clf"),
                "--n", "16", "--device", "cpu", "--stats-dir", str(tmp_path / "stats")]
        assert run_main(fid.main, argv) == 0
        printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert printed["fid_classifier"] >= 0 and printed["fid_classifier_solver"] == "generator"
        assert printed["fid_classifier_step"] == 6
    # a VAE decodes in one pass: --nfe is refused in one line
    assert run_main(fid.main, [*argv, "--nfe", "2"]) == 2
    assert "one-shot generator" in capsys.readouterr().err
