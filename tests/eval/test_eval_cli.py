"""`python -m genkit.eval.nll --run DIR` (and FID's CLI) on small real runs."""

import json

import pytest

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
    assert after == before | printed  # merged: the recipe's own metrics are kept
    assert printed["nll_n"] == 64 and printed["nll_divergence"] == "exact" and printed["nll_weights"] == "ema"
    assert 0 < printed["nll_nats"] < 20


def test_nll_cli_bad_run_is_one_line(tmp_path, capsys):
    code = run_main(nll.main, ["--run", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "not a run folder" in err
