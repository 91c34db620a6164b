"""`python -m genkit.eval.nll --run DIR` (and FID's CLI) on small real runs."""

import json

import pytest
import torch

from genkit.cli import run_main
from genkit.eval import nll
from genkit.recipes import reflow

FAST = ["--train.batch-size", "64", "--train.log-every", "10", "--train.checkpoint-every", "20",
        "--train.sample-every", "0", "--train.no-tensorboard", "--train.no-progress", "--device", "cpu",
        "--sample.n-eval", "100", "--sample.steps", "4", "--sample.nfe", "1", "--sample.n-snapshot", "20",
        "--sample.n-straightness", "20", "--model.hidden", "32", "--model.depth", "2"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert run_main(reflow.main, ["--out", str(out), "--train.steps", "20", *FAST]) == 0
    return out


def test_nll_cli_merges_into_eval_json(toy_run, capsys):
    before = json.loads((toy_run / "eval.json").read_text())
    code = run_main(nll.main, ["--run", str(toy_run), "--divergence", "exact", "--n", "64", "--method", "rk4",
                               "--steps", "8", "--device", "cpu"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0
    printed = json.loads(line)
    after = json.loads((toy_run / "eval.json").read_text())
    mine = {k: v for k, v in before.items() if not k.startswith("nll_")}
    assert after == mine | printed  # merged: the recipe's own metrics are kept
    assert printed["nll_n"] == 64 and printed["nll_divergence"] == "exact" and printed["nll_weights"] == "ema"
    assert 0 < printed["nll_nats"] < 20 and printed["nll_steps"] == 8 and "nll_atol" not in printed  # rk4: no tolerances
    assert printed["nll_step"] == 20 and printed["nll_batch_size"] == 500 and printed["nll_density_is_bound"] is False
    # another NLL evaluation replaces every nll_* entry of this one (no rk4 steps left beside dopri5's tolerances)
    code = run_main(nll.main, ["--run", str(toy_run), "--divergence", "exact", "--n", "16", "--device", "cpu"])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and json.loads((toy_run / "eval.json").read_text()) == mine | again
    assert "nll_steps" not in again and again["nll_solver"] == "dopri5" and again["nll_rtol"] == 1e-5


def test_nll_cli_refuses_what_2d_data_would_ignore(toy_run, capsys):
    for flags in (["--k", "4"], ["--split", "train"]):
        code = run_main(nll.main, ["--run", str(toy_run), "--divergence", "exact", "--n", "8", "--device", "cpu", *flags])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "drop --k and --split" in err
    for flags, message in ((["--batch-size", "0"], "--batch-size must be >= 1"), (["--n", "-5"], "--n must be >= 0")):
        assert run_main(nll.main, ["--run", str(toy_run), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_nll_cli_bad_run_is_one_line(tmp_path, capsys):
    code = run_main(nll.main, ["--run", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "not a run folder" in err


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory, image_folder):
    """A tiny image flow and a tiny classifier on the shared 8x8 ImageFolder (2 classes)."""
    from genkit.recipes import classifier

    root, runs = image_folder, tmp_path_factory.mktemp("image-runs")
    flow, clf = runs / "flow", runs / "clf"
    common = ["--data.dataset", "imagefolder", "--data.root", str(root), "--device", "cpu", "--train.no-tensorboard",
              "--train.no-progress", "--train.batch-size", "8"]
    assert run_main(reflow.main, [*common, "--out", str(flow), "--model.unet-channels", "16", "32", "--model.unet-layers", "1",
                                  "--train.steps", "2", "--train.sample-every", "0", "--sample.steps", "2", "--sample.nfe", "1",
                                  "--sample.n-straightness", "4"]) == 0
    assert run_main(classifier.main, [*common, "--out", str(clf), "--train.steps", "10", "--model.channels", "8", "16",
                                      "--model.feature-dim", "16"]) == 0
    return root, flow, clf


def test_fid_cli_classifier_features(image_runs, capsys):
    from genkit.eval import fid

    root, flow, clf = image_runs
    argv = ["--run", str(flow), "--features", "classifier", "--classifier", str(clf), "--n", "24", "--nfe", "1", "2",
            "--floor", "--device", "cpu", "--stats-dir", str(root / "stats")]
    assert run_main(fid.main, [*argv, "--batch-size", "5"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("fid_classifier_nfe1", "fid_classifier_nfe2", "fid_classifier_floor_train_vs_test"):
        assert printed[key] >= 0
    assert printed["fid_classifier_extractor"].startswith("classifier:imagefolder@") and printed["fid_classifier_n"] == 24
    assert printed["fid_classifier_ref"] == "imagefolder:test" and printed["fid_classifier_weights"] == "ema"
    assert printed["fid_classifier_ref_subset"] == "seeded random 24 of 32 (seed 0)" and printed["fid_classifier_step"] == 2
    assert printed["fid_classifier_floor_train_subset"] == "seeded random 24 of 32 (seed 0)"
    assert (flow / "fid_classifier_vs_nfe.png").stat().st_size > 0
    assert json.loads((flow / "eval.json").read_text())["fid_classifier_nfe2"] == printed["fid_classifier_nfe2"]
    assert list((root / "stats").glob("imagefolder-test-*.npz"))  # cached reference statistics
    # one seed per sample: another batch size gives the same FID
    assert run_main(fid.main, [*argv, "--batch-size", "24"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["fid_classifier_nfe1"] == pytest.approx(printed["fid_classifier_nfe1"], rel=1e-6)
    # another evaluation (one NFE, raw weights, no floor) replaces the whole fid_classifier family in eval.json
    assert run_main(fid.main, ["--run", str(flow), "--features", "classifier", "--classifier", str(clf), "--n", "24",
                               "--nfe", "2", "--weights", "raw", "--device", "cpu", "--stats-dir", str(root / "stats")]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recorded = {k: v for k, v in json.loads((flow / "eval.json").read_text()).items() if k.startswith("fid_classifier")}
    assert recorded == last and "fid_classifier_nfe1" not in recorded and recorded["fid_classifier_weights"] == "raw"
    # options FID would ignore are one-line errors
    for flags in (["--features", "inception", "--classifier", str(clf)], ["--ref", "train", "--floor"],
                  ["--solver", "dopri5", "--nfe", "10", "20"]):
        assert run_main(fid.main, ["--run", str(flow), "--device", "cpu", *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_fid_cli_missing_inception_weights_is_one_line(image_runs, tmp_path, capsys, monkeypatch):
    from genkit.eval import fid

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: offline, no weights
    _, flow, _ = image_runs
    code = run_main(fid.main, ["--run", str(flow), "--n", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "weights-inception" in err


def test_nll_cli_on_images_reports_bits_per_dim(image_runs, capsys):
    _, flow, _ = image_runs
    code = run_main(nll.main, ["--run", str(flow), "--n", "6", "--method", "euler", "--steps", "2", "--batch-size", "3",
                               "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and printed["nll_n"] == 6 and printed["nll_k"] == 1 and printed["nll_split"] == "test"
    assert printed["nll_divergence"] == "hutchinson-rademacherx1" and 0 < printed["nll_bpd"] < 100
    assert printed["nll_precision"] == "fp32"
    assert printed["nll_steps"] == 2 and printed["nll_nfe_per_solve"] == 2  # Euler: one evaluation per step
    assert printed["nll_subset"] == "seeded random 6 of 32 (seed 0)" and printed["nll_batch_size"] == 3
    assert "nll_atol" not in printed and "nll_k_note" not in printed


def test_nll_cli_one_image_and_several_draws(image_runs, capsys):
    """One image has no standard error: null in eval.json (not NaN, which is no JSON). Hutchinson with k > 1
    is optimistic, and eval.json says so."""
    _, flow, _ = image_runs
    argv = ["--run", str(flow), "--method", "euler", "--steps", "2", "--device", "cpu"]
    assert run_main(nll.main, [*argv, "--n", "1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["nll_bpd_stderr"] is None and printed["nll_subset"] == "seeded random 1 of 32 (seed 0)"
    text = (flow / "eval.json").read_text()
    assert "NaN" not in text and json.loads(text)["nll_bpd_stderr"] is None
    assert run_main(nll.main, [*argv, "--n", "2", "--k", "2"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["nll_k"] == 2 and "optimistic" in printed["nll_k_note"] and "--num-probes" in printed["nll_k_note"]


def test_nll_bf16_is_for_cuda_only(image_runs, capsys):
    """--precision bf16 parses; on the CPU the network still runs (and is recorded) in float32."""
    _, flow, _ = image_runs
    argv = ["--run", str(flow), "--n", "3", "--method", "euler", "--steps", "2", "--batch-size", "3", "--device", "cpu"]
    assert run_main(nll.main, [*argv, "--precision", "bf16"]) == 0
    bf16 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert run_main(nll.main, argv) == 0
    fp32 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bf16["nll_precision"] == "fp32" and bf16["nll_bpd"] == fp32["nll_bpd"]


def test_image_nll_resumes_where_it_stopped_and_equals_one_go(image_runs, capsys, monkeypatch):
    """Each batch has its own seed and is kept as it is done: a cut-off evaluation, run again, computes
    only the missing batches and gives what one uninterrupted evaluation gives."""
    _, flow, _ = image_runs
    argv = ["--run", str(flow), "--n", "9", "--method", "euler", "--steps", "2", "--batch-size", "3", "--device", "cpu"]
    assert run_main(nll.main, argv) == 0
    whole = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not (flow / nll.PROGRESS_FILE).exists()  # removed when the evaluation ends

    calls, real = [], nll.image_nll

    def cut_off_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the device tool's time limit, say
        return real(*args, **kwargs)

    monkeypatch.setattr(nll, "image_nll", cut_off_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_main(nll.main, argv)
    saved = json.loads((flow / nll.PROGRESS_FILE).read_text())
    assert sorted(saved["batches"]) == ["0", "1"]
    calls.clear()
    assert run_main(nll.main, argv) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(calls) == 1  # only the third batch was computed
    assert resumed["nll_bpd"] == whole["nll_bpd"] and resumed["nll_bpd_stderr"] == whole["nll_bpd_stderr"]
    assert resumed["nll_nfe_per_solve"] == whole["nll_nfe_per_solve"] == 2


def _fid_and_nll(flow, clf, stats, *flags):
    """FID (one NFE) and bits/dim of the tiny image flow on the CPU, with ``flags``; both must succeed."""
    from genkit.eval import fid

    assert run_main(fid.main, ["--run", str(flow), "--features", "classifier", "--classifier", str(clf), "--n", "4",
                               "--nfe", "2", "--batch-size", "4", "--device", "cpu", "--stats-dir", str(stats),
                               *flags]) == 0
    assert run_main(nll.main, ["--run", str(flow), "--n", "3", "--method", "euler", "--steps", "2", "--batch-size", "3",
                               "--device", "cpu", *flags]) == 0


def test_fid_and_nll_never_compile_on_the_cpu(image_runs, tmp_path, compile_forbidden):
    _, flow, clf = image_runs
    _fid_and_nll(flow, clf, tmp_path)  # --compile is the default


@pytest.mark.parametrize("flags", [(), ("--no-compile",)])
def test_fid_and_nll_compile_the_flow_once_on_cuda(image_runs, tmp_path, compile_spy, flags):
    import tyro

    from genkit.eval import fid

    for config_cls in (fid.FIDConfig, nll.NLLConfig):  # the flag parses; compiling is the default
        assert tyro.cli(config_cls, args=["--run", "r", *flags]).compile is (not flags)
    _, flow, clf = image_runs
    _fid_and_nll(flow, clf, tmp_path, *flags)
    if flags:
        assert compile_spy == []
    else:  # one sampler for FID, one density for NLL: each compiles the run's (frozen, eval-mode) flow once
        assert len(compile_spy) == 2
        assert all(isinstance(net, torch.nn.Module) and not net.training for net in compile_spy)
        # two probes take two backward passes per forward, which a compiled backward refuses: eager
        assert run_main(nll.main, ["--run", str(flow), "--n", "3", "--method", "euler", "--steps", "2",
                                   "--batch-size", "3", "--num-probes", "2", "--device", "cpu"]) == 0
        assert len(compile_spy) == 2
