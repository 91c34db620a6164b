"""FID over checkpoints (python -m genkit.eval.fid --checkpoints) and run comparison (python -m genkit.eval.compare).

Tiny image runs (8x8 ImageFolder) of WGAN-GP and rectified flow keep every checkpoint; FID uses a stub
feature extractor (per-channel mean and std), so no classifier or Inception network is trained or loaded.
The comparison's selection logic is checked on fid_curve.json files written by hand.
"""

import json
import stat

import pytest
import torch

from genkit.cli import run_main
from genkit.errors import GenkitError
from genkit.eval import compare, fid
from genkit.eval.runs import RUN_LOADERS, SAMPLED_MODELS, checkpoint_steps, load_eval_run
from genkit.recipes import reflow, reflow_gan

CRITIC_STEPS = 2  # the generator steps on every 2nd Trainer step
COMMON = ["--data.dataset", "imagefolder", "--device", "cpu", "--train.no-tensorboard", "--train.no-progress",
          "--train.batch-size", "8", "--train.checkpoint-every", "2", "--train.keep-checkpoints", "0",
          "--train.sample-every", "0"]


class ChannelMoments:
    """Stub extractor: uint8 (B, C, H, W) -> (B, 2C) per-channel mean and std in [0, 1]."""

    name, dim = "stub:channel-moments", 6

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


@pytest.fixture(scope="module")
def runs(image_folder, tmp_path_factory):
    """(work folder, WGAN-GP run with checkpoints at steps 2, 4, 6, flow run with checkpoints at 1, 2)."""
    root = tmp_path_factory.mktemp("curve_runs")
    gan, flow = root / "wgan", root / "flow"
    common = [*COMMON, "--data.root", str(image_folder)]
    assert run_main(reflow_gan.main, [*common, "--out", str(gan), "--objective.kind", "wgan_gp", "--objective.critic-steps",
                                      str(CRITIC_STEPS), "--model.latent-dim", "4", "--model.g-width", "8", "--model.d-width",
                                      "8", "--train.steps", "6"]) == 0
    assert run_main(reflow.main, [*common, "--out", str(flow), "--model.unet-channels", "16", "32", "--model.unet-layers", "1",
                                  "--train.steps", "2", "--train.checkpoint-every", "1", "--sample.steps", "2",
                                  "--sample.nfe", "1", "--sample.n-straightness", "4", "--sample.n-snapshot", "4"]) == 0
    return root, gan, flow


def fid_config(root, run, **kw):
    return fid.FIDConfig(run=run, n=16, batch_size=8, device="cpu", stats_dir=root / "stats", **kw)


def test_load_eval_run_at_a_step(runs):
    _, gan, _ = runs
    assert set(SAMPLED_MODELS) == set(RUN_LOADERS)  # every evaluable recipe says which network it samples
    assert checkpoint_steps(gan) == [2, 4, 6]
    assert load_eval_run(gan, device=torch.device("cpu"), step=4).step == 4
    assert load_eval_run(gan, device=torch.device("cpu")).step == 6  # None: the latest
    with pytest.raises(GenkitError, match=r"no checkpoint at step 5 \(it has steps 2, 4, 6\)") as e:
        load_eval_run(gan, device=torch.device("cpu"), step=5)
    assert "\n" not in str(e.value)


def test_gan_curve_has_every_checkpoint(runs):
    root, gan, _ = runs
    out = fid.evaluate_fid(fid_config(root, gan, checkpoints="all"), extractor=ChannelMoments())
    curve = compare.read_curve(gan)
    steps = [p.step for p in curve.points]
    assert steps == [2, 4, 6]
    assert [p.generator_steps for p in curve.points] == [s // CRITIC_STEPS for s in steps]  # truthful generator steps
    seconds = [p.train_seconds for p in curve.points]
    assert all(s is not None and s > 0 for s in seconds) and seconds == sorted(seconds)
    assert all(p.fid >= 0 for p in curve.points)
    assert curve.settings == {"metric": "fid_inception", "extractor": "stub:channel-moments", "ref": "imagefolder:test",
                              "n": 16, "n_ref": 16, "ref_subset": "seeded random 16 of 32 (seed 0)", "solver": "generator",
                              "nfe": None, "weights": "ema", "precision": "fp32", "seed": 0}
    assert (gan / "fid_curve.png").stat().st_size > 0
    # the latest checkpoint's entries are the ones the default (latest-only) command gives: same noise, same weights
    latest = fid.evaluate_fid(fid_config(root, gan), extractor=ChannelMoments())
    assert out["fid_inception"] == latest["fid_inception"] == curve.points[-1].fid
    assert out == latest | {"fid_inception_seconds": out["fid_inception_seconds"]}


def test_curve_of_some_steps_merges_and_leaves_eval_json(runs):
    root, gan, _ = runs
    (gan / compare.CURVE_FILE).unlink(missing_ok=True)
    fid.evaluate_fid(fid_config(root, gan, checkpoints=(2, 6)), extractor=ChannelMoments())
    first = compare.read_curve(gan)
    eval_json = (gan / "eval.json").read_text()
    assert fid.evaluate_fid(fid_config(root, gan, checkpoints=(4,)), extractor=ChannelMoments()) == {}  # not the latest
    assert (gan / "eval.json").read_text() == eval_json
    merged = compare.read_curve(gan)
    assert [p.step for p in merged.points] == [2, 4, 6]
    assert (merged.points[0], merged.points[2]) == first.points  # kept, not recomputed
    # "missing" evaluates nothing more; other settings replace the file
    assert fid.evaluate_fid(fid_config(root, gan, checkpoints="missing"), extractor=ChannelMoments()) == {}
    assert compare.read_curve(gan) == merged
    fid.evaluate_fid(fid_config(root, gan, checkpoints=(4,), seed=1), extractor=ChannelMoments())
    assert [p.step for p in compare.read_curve(gan).points] == [4]
    fid.evaluate_fid(fid_config(root, gan, checkpoints="missing", seed=1), extractor=ChannelMoments())
    assert [p.step for p in compare.read_curve(gan).points] == [2, 4, 6]


def test_flow_curve_counts_flow_steps(runs):
    root, _, flow = runs
    out = fid.evaluate_fid(fid_config(root, flow, checkpoints="all", nfe=(1,)), extractor=ChannelMoments())
    curve = compare.read_curve(flow)
    assert [(p.step, p.generator_steps) for p in curve.points] == [(1, 1), (2, 2)]
    assert curve.settings["solver"] == "euler" and curve.settings["nfe"] == 1
    assert out["fid_inception_nfe1"] == curve.points[-1].fid
    with pytest.raises(GenkitError, match="takes one --nfe"):
        fid.evaluate_fid(fid_config(root, flow, checkpoints="all", nfe=(1, 2)), extractor=ChannelMoments())


class CountSolves:
    """Wraps genkit.sampling.integrate: the network evaluations each sample of each solve went through."""

    def __init__(self, monkeypatch):
        import genkit.sampling

        self.per_sample, real = [], genkit.sampling.integrate

        def counting(field, x, *args, **kwargs):
            traj = real(field, x, *args, **kwargs)
            self.per_sample += [traj.nfe] * x.shape[0]
            return traj

        monkeypatch.setattr(genkit.sampling, "integrate", counting)


@pytest.mark.parametrize("solver, nfe", [("rk4", (4, 8)), ("midpoint", (2,))])
def test_fid_nfe_counts_network_evaluations(runs, monkeypatch, solver, nfe):
    """--nfe K with a fixed-step solver makes K network evaluations per sample (rk4: K/4 steps), and
    eval.json's fid_<features>_nfeK says so."""
    root, _, flow = runs
    for k in nfe:
        counter = CountSolves(monkeypatch)
        out = fid.evaluate_fid(fid_config(root, flow, solver=solver, nfe=(k,)), extractor=ChannelMoments())
        assert counter.per_sample == [k] * 16
        assert out[f"fid_inception_nfe{k}"] >= 0 and out["fid_inception_solver"] == solver
    with pytest.raises(GenkitError, match="multiple of 4"):
        fid_config(root, flow, solver="rk4", nfe=(2,))


def test_fid_dopri5_records_its_measured_nfe(runs, monkeypatch):
    root, _, flow = runs
    with pytest.raises(GenkitError, match="dopri5 chooses its own steps"):
        fid_config(root, flow, solver="dopri5", nfe=(10, 20))
    from genkit.sampling import ODESampler

    def loose(net, shape, method, steps, device):  # the untrained UNet needs ~300 NFE at the default 1e-5
        return ODESampler(net, shape, method=method, steps=steps, atol=1e-3, rtol=1e-2, device=device)

    monkeypatch.setattr(reflow, "make_sampler", loose)
    counter = CountSolves(monkeypatch)
    cfg = fid.FIDConfig(run=flow, n=4, batch_size=2, device="cpu", stats_dir=root / "stats", solver="dopri5")
    out = fid.evaluate_fid(cfg, extractor=ChannelMoments())
    assert out["fid_inception"] >= 0 and not any(k.startswith("fid_inception_nfe") and k != "fid_inception_nfe" for k in out)
    assert len(counter.per_sample) == 4 and out["fid_inception_nfe"] == pytest.approx(sum(counter.per_sample) / 4, abs=0.05)
    assert out["fid_inception_nfe"] > 2
    assert out["fid_inception_atol"] == 1e-3 and out["fid_inception_rtol"] == 1e-2  # the sampler's tolerances


def test_fid_evaluation_replaces_its_family_in_eval_json(runs):
    """A second FID evaluation with other settings leaves none of the first one's keys behind."""
    from genkit.train.logging import update_eval

    root, _, flow = runs
    before = json.loads((flow / "eval.json").read_text())
    first = fid.evaluate_fid(fid_config(root, flow, nfe=(1, 2), floor=True), extractor=ChannelMoments())
    update_eval(flow, first, family="fid_inception")
    assert {"fid_inception_nfe1", "fid_inception_floor_train_vs_test"} <= set(json.loads((flow / "eval.json").read_text()))
    second = fid.evaluate_fid(fid_config(root, flow, nfe=(2,), weights="raw"), extractor=ChannelMoments())
    update_eval(flow, second, family="fid_inception")
    after = json.loads((flow / "eval.json").read_text())
    assert after == {k: v for k, v in before.items() if not k.startswith("fid_inception")} | second
    assert "fid_inception_nfe1" not in after and "fid_inception_floor_train_vs_test" not in after
    assert after["fid_inception_weights"] == "raw" and after["fid_inception_step"] == 2
    assert update_eval(flow, {}, family="fid_inception") == after  # nothing evaluated (a curve's older checkpoint): kept


def test_subset_of_a_split_sorted_by_class_holds_every_class(image_folder):
    """Fewer images than the split: a fixed seeded random subset, not the first N (one class here)."""
    from types import SimpleNamespace

    from genkit.data.images import load_images, load_labels
    from genkit.eval.runs import eval_images, subset_description, subset_indices

    labels, _ = load_labels("imagefolder", root=image_folder, split="test")
    assert len(labels) == 32 and labels[:8].unique().numel() == 1  # the first 8: all "dark"
    index = subset_indices(32, 8)
    assert torch.equal(index, subset_indices(32, 8)) and index.tolist() == sorted(set(index.tolist()))
    assert labels[index].unique().numel() == 2
    data = SimpleNamespace(dataset="imagefolder", root=image_folder, download=False)
    images, total = eval_images(data, "test", 8)
    assert total == 32 and torch.equal(images, load_images("imagefolder", root=image_folder, split="test")[index])
    assert subset_indices(32, 32) is None and subset_indices(32, 40) is None and len(eval_images(data, "test", 0)[0]) == 32
    assert subset_description(32, 8) == "seeded random 8 of 32 (seed 0)" and subset_description(32, 40) == "all 32"


def test_default_stats_cache_stays_outside_a_flat_image_folder(tmp_path):
    """A flat ImageFolder (class folders at its root): the cache must not become a class of images; two
    folders sharing a --stats-dir keep their own statistics."""
    import shutil
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from genkit.data.images import load_images

    flat = tmp_path / "flat"
    for i, cls in enumerate(("a", "b")):
        (flat / cls).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(np.full((8, 8, 3), 60 * i + 10 * j, dtype=np.uint8)).save(flat / cls / f"{j}.png")
    data = SimpleNamespace(dataset="imagefolder", root=flat, download=False)
    ref = fid.reference_stats(data, "test", ChannelMoments(), n=4, batch_size=4, stats_dir=None, device="cpu")
    assert ref.path.is_file() and ref.path.parent == tmp_path / "flat-fid_stats" and ref.n == 4
    assert load_images("imagefolder", root=flat, split="test").shape == (6, 3, 8, 8)  # still two classes, 6 images
    again = fid.reference_stats(data, "test", ChannelMoments(), n=4, batch_size=2, stats_dir=None, device="cpu")
    assert again.path == ref.path and np.array_equal(again.mu, ref.mu)
    copy = shutil.copytree(flat, tmp_path / "copy")
    Image.fromarray(np.full((8, 8, 3), 255, dtype=np.uint8)).save(copy / "a" / "0.png")
    other = fid.reference_stats(SimpleNamespace(dataset="imagefolder", root=copy, download=False), "test",
                                ChannelMoments(), n=4, batch_size=4, stats_dir=ref.path.parent, device="cpu")
    assert other.path.parent == ref.path.parent and other.path != ref.path and not np.array_equal(other.mu, ref.mu)


def test_fid_config_refuses_options_it_would_ignore(tmp_path):
    bad = {"--n must be >= 2": {"n": 1}, "--batch-size must be >= 1": {"batch_size": 0},
           "--classifier is for --features classifier": {"classifier": tmp_path},
           "--inception-weights is for --features inception": {"features": "classifier", "inception_weights": tmp_path},
           "use it with --ref test": {"ref": "train", "floor": True}}
    for message, kw in bad.items():
        with pytest.raises(GenkitError, match=message):
            fid.FIDConfig(run=tmp_path, **kw)


def test_fid_cli_missing_checkpoint_is_one_line(runs, capsys):
    _, gan, _ = runs
    code = run_main(fid.main, ["--run", str(gan), "--checkpoints", "2", "3", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "no checkpoint at step 3 (it has steps 2, 4, 6)" in err


def test_fid_cli_parses_checkpoints():
    import tyro

    parse = lambda *a: tyro.cli(fid.FIDConfig, args=["--run", "r", *a]).checkpoints  # noqa: E731
    assert parse() == "latest" and parse("--checkpoints", "all") == "all" and parse("--checkpoints", "missing") == "missing"
    assert parse("--checkpoints", "1000", "2000") == (1000, 2000)


# ---- compare, on curves written by hand -------------------------------------------------------------------
SETTINGS = {"metric": "fid_classifier", "extractor": "classifier:mnist", "ref": "mnist:test", "n": 10000,
            "n_ref": 10000, "solver": "generator", "nfe": None, "weights": "ema", "seed": 0}


def fake_run(folder, card, points, settings=SETTINGS):
    """A run folder with config.json and a fid_curve.json of (step, generator_steps, train_seconds, fid) points."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(card))
    rows = [dict(step=s, generator_steps=g, train_seconds=t, fid=f, sample_seconds=1.0) for s, g, t, f in points]
    (folder / "fid_curve.json").write_text(json.dumps({"settings": settings, "points": rows}))
    return folder


@pytest.fixture
def three_runs(tmp_path):
    mono = fake_run(tmp_path / "mono", {"recipe": "monoflow", "objective": {"h": "identity", "form": "direct"}},
                    [(1000, 1000, 10.0, 50.0), (2000, 2000, 20.0, 40.0), (3000, 3000, 30.0, 30.0)])
    wgan = fake_run(tmp_path / "wgan", {"recipe": "reflow_gan", "objective": {"kind": "wgan_gp", "critic_steps": 5}},
                    [(5000, 1000, 25.0, 45.0), (10000, 2000, 50.0, 35.0)])
    mono_ls = fake_run(tmp_path / "mono_ls", {"recipe": "monoflow", "objective": {"h": "log_sigmoid", "form": "direct"}},
                       [(1000, 1000, 12.0, 48.0), (2000, 2000, 24.0, 38.0), (3000, 3000, 36.0, 28.0),
                        (4000, 4000, 48.0, 20.0)])
    return mono, wgan, mono_ls


def test_compare_picks_equal_steps_and_equal_time(three_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run_main(compare.main, ["--runs", *map(str, three_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "comparison.md").read_text()
    result = json.loads((out / "comparison.json").read_text())
    # the largest generator-step count every run has a point at: 2000; the shortest run's time: min(30, 50, 48),
    # read up to 1 s later
    assert result["budgets"] == [{"axis": "generator_steps", "value": 2000, "read_up_to": 2000},
                                 {"axis": "train_seconds", "value": 30.0, "read_up_to": 31.0}]
    labels = [r["label"] for r in result["runs"]]
    assert labels == ["MonoFlow h=identity", "WGAN-GP", "MonoFlow h=log_sigmoid"]
    at_steps = [r["at_budgets"][0] for r in result["runs"]]
    assert [(p["generator_steps"], p["fid"]) for p in at_steps] == [(2000, 40.0), (2000, 35.0), (2000, 38.0)]
    # equal time: each run's last checkpoint at or before 30 s: 30 s (Trainer step 3000), 25 s (step 5000), 24 s (step 2000)
    at_time = [r["at_budgets"][1] for r in result["runs"]]
    assert [(p["step"], p["train_seconds"], p["fid"]) for p in at_time] == [(3000, 30.0, 30.0), (5000, 25.0, 45.0),
                                                                             (2000, 24.0, 38.0)]
    assert [r["final"]["fid"] for r in result["runs"]] == [30.0, 35.0, 20.0]
    table = printed.splitlines()
    head = "| run | FID @ 2,000 generator steps | FID @ 30 s | final FID | generator steps | Trainer steps | train seconds |"
    assert head in table
    assert "| WGAN-GP | 35 (2,000) | 45 (25 s) | 35 | 2,000 | 10,000 | 50 s |" in table
    png = out / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and stat.S_IMODE(png.stat().st_mode) == 0o644


def test_compare_extra_budgets_and_untimed_runs(tmp_path):
    flow = SETTINGS | {"solver": "euler", "nfe": 100}
    timed = fake_run(tmp_path / "a", {"recipe": "reflow", "stage": "rf"}, [(100, 100, 5.0, 9.0), (200, 200, 10.0, 7.0)],
                     settings=flow)
    untimed = fake_run(tmp_path / "b", {"recipe": "reflow", "stage": "rf"}, [(100, 100, None, 8.0), (300, 300, None, 6.0)],
                       settings=flow)
    c = compare.compare_runs([timed, untimed], steps=(200, 250), seconds=(7.5,))
    # the common budgets (100 generator steps: the largest both have a point at; 10 s, from the timed run
    # alone) and the extra ones, in order
    assert c.budgets == (("generator_steps", 100), ("generator_steps", 200), ("generator_steps", 250),
                         ("train_seconds", 7.5), ("train_seconds", 10.0))
    assert [p.step for p in c.picks[1][:3]] == [100, 100, 100]  # the untimed run at 100, 200, 250 generator steps
    assert c.picks[0][2].step == 200 and c.picks[0][3].step == 100 and c.picks[1][4] is None
    # equal labels get the folder name
    assert [r.label for r in c.runs] == ["rectified flow, euler 100 NFE [a]", "rectified flow, euler 100 NFE [b]"]
    compare.save_comparison(c, tmp_path / "out")
    row = "| rectified flow, euler 100 NFE [b] | 8 (100) | 8 (100) | 8 (100) | n/a | n/a | 6 | 300 | 300 | n/a |"
    assert row in (tmp_path / "out" / "comparison.md").read_text().splitlines()


def test_compare_labels_and_errors(three_runs, tmp_path, capsys):
    mono, wgan, _ = three_runs
    c = compare.compare_runs([mono, wgan], ["h = identity", "WGAN-GP (5:1)"])
    assert [r.label for r in c.runs] == ["h = identity", "WGAN-GP (5:1)"]
    assert compare.run_label(fake_run(tmp_path / "p", {"recipe": "monoflow", "objective": {
        "h": "arcsinh", "form": "particle", "d_steps": 1, "g_steps": 3}}, [])) == "MonoFlow h=arcsinh, particle, 3 G steps"
    assert compare.run_label(fake_run(tmp_path / "r", {"recipe": "reflow_gan", "objective": {
        "kind": "reflow_gan", "gp_weight": 1.0, "gp_center": None, "critic_steps": 1}}, [])) == \
        "ReFlow-GAN, gp weight 1, 1:1"

    def error(argv):
        code = run_main(compare.main, [*argv, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
        return err

    assert "one per run" in error(["--runs", str(mono), str(wgan), "--labels", "only-one"])
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"recipe": "monoflow"}))
    assert f"python -m genkit.eval.fid --run {bare} --checkpoints all" in error(["--runs", str(mono), str(bare)])
    other = fake_run(tmp_path / "other", {"recipe": "reflow", "stage": "rf"}, [(1, 1, 1.0, 1.0)],
                     settings=SETTINGS | {"extractor": "inception-v3-compat"})
    assert "differ in extractor" in error(["--runs", str(mono), str(other)])
    assert not (tmp_path / "x").exists()


def grid_run(folder, card, grid, checkpoints, final, seconds_per_step, final_seconds):
    """A time-limited run checkpointed every ``grid`` generator steps (``checkpoints`` of them) and once more at its
    end, off the grid: ``final`` generator steps after ``final_seconds`` (a few ms past the time limit)."""
    points = [(g, g, g * seconds_per_step, 100.0 / g) for g in range(grid, grid * checkpoints + 1, grid)]
    return fake_run(folder, card, [*points, (final, final, final_seconds, 100.0 / final)])


def test_compare_reads_time_limited_runs_at_equal_generator_steps_and_time(tmp_path):
    """Runs of the same time limit (240 s) on a shared grid of 576 generator steps end off the grid and a few ms
    apart. The smallest final count (WGAN-GP's 5,664) would read WGAN-GP at 5,664 but the others a checkpoint
    earlier (5,184), and the smallest final time (240.002 s) MonoFlow at 238.1 s: every run must be read at the
    same generator steps, and at times within the stated tolerance of each other."""
    mono = grid_run(tmp_path / "mono", {"recipe": "monoflow", "objective": {"h": "identity"}}, 576, 62, 36_000,
                    238.1 / (576 * 62), 240.009)
    reflow_gan = grid_run(tmp_path / "rg", {"recipe": "reflow_gan", "objective": {"kind": "reflow_gan"}}, 576, 10, 5_900,
                          0.0405, 240.004)
    wgan = grid_run(tmp_path / "wgan", {"recipe": "reflow_gan", "objective": {"kind": "wgan_gp"}}, 576, 9, 5_664, 0.0424,
                    240.002)
    c = compare.compare_runs([mono, reflow_gan, wgan])
    assert c.budgets == (("generator_steps", 5_184), ("train_seconds", 240.002)) and c.notes == ()
    at_steps, at_time = zip(*c.picks)
    assert [p.generator_steps for p in at_steps] == [5_184] * 3  # the largest count every run has a checkpoint at
    times = [p.train_seconds for p in at_time]
    assert times == [240.009, 240.004, 240.002]  # each run's final checkpoint, not MonoFlow's 238.1 s
    assert max(times) - min(times) <= compare.time_tolerance(240.002) == 2.40002
    assert compare.time_tolerance(30.0) == 1.0
    out = json.loads(json.dumps(c.to_json()))
    assert out["budgets"][1] == {"axis": "train_seconds", "value": 240.002, "read_up_to": 240.002 + 2.40002}
    table = c.markdown()
    assert "max(1 s, 1%)" in table and "| WGAN-GP | 0.01929 (5,184) | 0.01766 (240 s) |" in table


def test_compare_without_a_shared_generator_step_count_says_so(tmp_path):
    a = fake_run(tmp_path / "a", {"recipe": "monoflow", "objective": {"h": "identity"}}, [(500, 500, 5.0, 9.0), (1000, 1000, 10.0, 8.0)])
    b = fake_run(tmp_path / "b", {"recipe": "reflow_gan", "objective": {"kind": "wgan_gp"}},
                 [(3000, 600, 6.0, 7.0), (4500, 900, 9.0, 6.0)])
    assert compare.equal_steps_budget([compare.read_curve(a), compare.read_curve(b)]) == (900, False)
    c = compare.compare_runs([a, b])
    assert c.budgets[0] == ("generator_steps", 900) and [p.generator_steps for p in c.picks[0][:1] + c.picks[1][:1]] == [500, 900]
    assert len(c.notes) == 1 and "no generator-step count has an evaluated checkpoint in every run" in c.notes[0]
    assert f"Note: {c.notes[0]}" in c.markdown().splitlines() and c.to_json()["notes"] == list(c.notes)


# ---- thinned curves (--curve-points, --curve-dense-until) ----------------------------------------------------------
def test_thin_checkpoints_keeps_the_dense_region_and_the_latest():
    """A fast run on a shared grid (here 100 checkpoints, every 10 steps, and an off-grid final one): about
    ``points`` evaluated, every one up to ``dense_until``, evenly spaced beyond it, the latest always."""
    steps = [*range(10, 1001, 10), 1004]
    picked = fid.thin_checkpoints(steps, 125, 20)
    assert picked[:12] == list(range(10, 121, 10)) and len(picked) == 20 and picked[-1] == 1004
    assert picked == sorted(set(picked)) and set(picked) <= set(steps)
    gaps = [picked[i + 1] - picked[i] for i in range(12, 19)]
    assert max(gaps) - min(gaps) <= 20  # evenly spaced beyond the dense region (one grid step of rounding)
    assert fid.thin_checkpoints(steps, 5_000, 20) == steps  # all dense: nothing dropped, nothing missing
    assert fid.thin_checkpoints([10, 20, 30], 0, 1) == [30]  # always the latest
    assert fid.thin_checkpoints([10, 20, 30], 10, 20) == [10, 20, 30] and fid.thin_checkpoints([], 10, 5) == []


def test_thinned_curve_evaluates_its_selection_and_missing_continues_it(runs):
    """--curve-points on the WGAN-GP run (checkpoints 2, 4, 6): the dense step and the latest; the dense region
    may reach past the last checkpoint (a slower run than planned) without failing; missing adds nothing new."""
    root, gan, _ = runs
    (gan / compare.CURVE_FILE).unlink(missing_ok=True)
    thin = fid_config(root, gan, checkpoints="all", curve_points=2, curve_dense_until=2)
    assert fid.evaluate_fid(thin, extractor=ChannelMoments())["fid_inception"] >= 0  # the latest is among them
    assert [p.step for p in compare.read_curve(gan).points] == [2, 6]
    again = fid_config(root, gan, checkpoints="missing", curve_points=2, curve_dense_until=2)
    assert fid.evaluate_fid(again, extractor=ChannelMoments()) == {}  # its selection is done: nothing evaluated
    dense = fid_config(root, gan, checkpoints="missing", curve_points=2, curve_dense_until=1_000)
    fid.evaluate_fid(dense, extractor=ChannelMoments())
    assert [p.step for p in compare.read_curve(gan).points] == [2, 4, 6]


def test_curve_points_options_are_checked():
    import tyro

    parsed = tyro.cli(fid.FIDConfig, args=["--run", "r", "--checkpoints", "missing", "--curve-points", "20",
                                           "--curve-dense-until", "6734"])
    assert (parsed.curve_points, parsed.curve_dense_until) == (20, 6734)
    bad = {"thins a curve of --checkpoints all or missing": {"curve_points": 5},
           "--curve-points must be >= 1": {"checkpoints": "all", "curve_points": 0},
           "without --curve-points": {"checkpoints": "all", "curve_dense_until": 10},
           "got -1": {"checkpoints": "all", "curve_points": 3, "curve_dense_until": -1}}
    for message, kw in bad.items():
        with pytest.raises(GenkitError, match=message):
            fid.FIDConfig(run="r", **kw)
