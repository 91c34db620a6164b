"""The recipes' common command line (genkit/cli.py): run folders, devices, presets, packaging."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from genkit import cli
from genkit.cli import recipes_dir, resolve_device, run_main
from genkit.errors import GenkitError
from genkit.recipes import reflow

REPO = Path(__file__).resolve().parents[1]
FAST = ["--preset", "toy", "--train.steps", "3", "--train.batch-size", "32", "--train.log-every", "3",
        "--train.sample-every", "0", "--train.no-tensorboard", "--train.no-progress",
        "--sample.n-eval", "100", "--sample.steps", "5", "--sample.n-snapshot", "50", "--sample.nfe", "1", "2",
        "--device", "cpu"]


def one_line_error(capsys, argv):
    """Run the reflow recipe with ``argv``; check it ended in one ``error:`` line (exit 2) and return it."""
    code = run_main(reflow.main, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("sub", ["", "sub"])
def test_out_that_is_a_file_is_a_one_line_error(capsys, tmp_path, sub):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out = afile / sub if sub else afile
    err = one_line_error(capsys, [*FAST, "--out", str(out)])
    assert f"--out {out} is a file" in err and "pass a folder" in err
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize("device", ["mps", "meta", "xpu:0"])
def test_unsupported_device_types_are_refused(capsys, tmp_path, device):
    with pytest.raises(GenkitError, match=f"unsupported device '{device}'"):
        resolve_device(device)
    assert "use auto, cpu, cuda or cuda:N" in one_line_error(capsys, [*FAST, "--out", str(tmp_path / "r"),
                                                                    "--device", device])
    assert not (tmp_path / "r").exists()


def test_resume_refuses_other_data_or_seed_and_allows_more_steps(capsys, tmp_path):
    """The same --out with another dataset or seed is another run: refused before anything is written (the
    weights are of the first); more steps, another device or evaluation settings resume."""
    out = tmp_path / "run"
    assert run_main(reflow.main, [*FAST, "--out", str(out)]) == 0
    card, ev = (out / "config.json").read_text(), (out / "eval.json").read_text()
    err = one_line_error(capsys, [*FAST, "--out", str(out), "--data.dataset", "moons", "--seed", "1"])
    assert "data.dataset: '8gaussians' -> 'moons'" in err and "seed: 0 -> 1" in err and "another --out" in err
    assert (out / "config.json").read_text() == card and (out / "eval.json").read_text() == ev
    err = one_line_error(capsys, [*FAST, "--out", str(out), "--optim.lr", "0.01"])
    assert "optim.lr" in err
    code = run_main(reflow.main, [*FAST, "--out", str(out), "--train.steps", "5", "--sample.n-eval", "50",
                                  "--train.checkpoint-every", "1", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    resumed = json.loads((out / "config.json").read_text())
    assert resumed["train"]["steps"] == 5 and json.loads((out / "eval.json").read_text())["step"] == 5
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [3, 5]


def test_two_presets_the_last_is_applied_and_recorded(capsys):
    assert run_main(reflow.main, ["--preset", "toy", "--preset", "mnist", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["preset"] == "mnist" and cfg["data"]["dataset"] == "mnist"
    assert run_main(reflow.main, ["--preset=mnist", "--preset", "toy", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["preset"] == "toy" and cfg["data"]["dataset"] == "8gaussians"


def test_help_explains_the_zero_checkpoint_settings(capsys):
    with pytest.raises(SystemExit):
        reflow.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "0: keep every checkpoint" in out and "0: only at the end of the run" in out


def write_preset(tmp_path, monkeypatch, content: bytes) -> None:
    (tmp_path / "reflow").mkdir()
    (tmp_path / "reflow" / "mine.toml").write_bytes(content)
    monkeypatch.setenv("GENKIT_RECIPES", str(tmp_path))


def test_unreadable_preset_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    write_preset(tmp_path, monkeypatch, b"\xff\xfe[train]\nsteps = 3\n")
    err = one_line_error(capsys, ["--preset", "mine", "--dry-run"])
    assert "mine.toml is not valid TOML" in err


def test_preset_bools_are_not_numbers(capsys, tmp_path, monkeypatch):
    write_preset(tmp_path, monkeypatch, b"[train]\nsteps = true\nema_decay = false\n")
    assert "train.steps must be int, got True" in one_line_error(capsys, ["--preset", "mine", "--dry-run"])
    (tmp_path / "reflow" / "mine.toml").write_bytes(b"[train]\nema_decay = false\n")
    assert "train.ema_decay must be float, got False" in one_line_error(capsys, ["--preset", "mine", "--dry-run"])


def test_recipes_dir_env_then_source_tree_then_package_data(tmp_path, monkeypatch):
    monkeypatch.setenv("GENKIT_RECIPES", str(tmp_path))
    assert recipes_dir() == tmp_path
    monkeypatch.delenv("GENKIT_RECIPES")
    assert recipes_dir() == REPO / "recipes"  # this checkout
    # an installed copy: genkit/ without a source tree around it finds its presets beside it
    site = tmp_path / "site"
    shutil.copytree(REPO / "genkit", site / "genkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "recipes", site / "genkit" / "presets")
    code = ("from genkit.cli import recipes_dir, available_presets; "
            "print(recipes_dir()); print(available_presets('reflow'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=site, capture_output=True, text=True, timeout=60,
                          env={"PATH": "", "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    where, presets = proc.stdout.splitlines()
    assert Path(where) == site / "genkit" / "presets" and "toy" in presets


def test_the_wheel_ships_every_module_and_preset(tmp_path):
    """pip builds a wheel offline (no build isolation: setuptools from this environment; a copy of the source,
    so that no build/ folder lands in the checkout) holding every module of genkit/ and every preset of
    recipes/, the latter under genkit/presets/ (pyproject.toml lists the packages by hand)."""
    src = tmp_path / "src"
    for name in ("genkit", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("genkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "genkit").rglob("*.py")}
    presets = {f"genkit/presets/{p.relative_to(REPO / 'recipes').as_posix()}" for p in (REPO / "recipes").rglob("*.toml")}
    assert "genkit/cli.py" in modules and "genkit/presets/reflow/toy.toml" in presets
    assert sorted(modules - names) == [] and sorted(presets - names) == []


def test_check_out_folder_accepts_new_and_existing_folders(tmp_path):
    cli.check_out_folder(tmp_path)
    cli.check_out_folder(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checked, not created
