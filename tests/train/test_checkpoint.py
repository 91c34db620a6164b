"""Checkpoints: atomic under SIGKILL, keep-last-N, never unpickle code."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from genkit.errors import GenkitError
from genkit.train import checkpoint as ckpt


def save(root, step, model, keep=3):
    return ckpt.save_checkpoint(root, step, models={"m": model}, ema={"m": model},
                                trainer_state={"step": step, "t": torch.arange(3)}, recipe="r", config={}, keep=keep)


def test_round_trip_and_keep_last_n(tmp_path):
    model = nn.Linear(4, 3)
    for step in (1, 2, 3, 4):
        save(tmp_path, step, model, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    other = nn.Linear(4, 3)
    ckpt.load_weights(ckpt.latest_checkpoint(tmp_path), "m", other)
    assert torch.equal(other.weight, model.weight)
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path))
    assert state["step"] == 4 and torch.equal(state["t"], torch.arange(3))
    assert not list(tmp_path.glob(".tmp-*"))


KILLED_WRITER = textwrap.dedent("""
    import os, sys, time, torch
    from genkit.train import checkpoint as ckpt
    root = sys.argv[1]
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 4)
    ckpt.save_checkpoint(root, 1, models={"m": m}, ema={"m": m}, trainer_state={"step": 1}, recipe="r", config={})
    real_save = torch.save
    def slow_save(obj, f, *a, **k):  # write part of checkpoint 2, then hang until killed
        real_save(obj, f, *a, **k)
        open(os.path.join(root, "WRITING"), "w").close()
        time.sleep(120)
    torch.save = slow_save
    with torch.no_grad():
        m.weight.add_(1.0)
    ckpt.save_checkpoint(root, 2, models={"m": m}, ema={"m": m}, trainer_state={"step": 2}, recipe="r", config={})
""")


def test_sigkill_while_writing_keeps_previous_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)])
    deadline = time.time() + 60
    while not (tmp_path / "WRITING").exists():
        assert proc.poll() is None and time.time() < deadline, "writer exited or never reached the write"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".tmp-step_00000002-*")), "the half-written checkpoint should be a temporary"
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step_00000001"
    torch.manual_seed(0)
    expected = nn.Linear(4, 4)
    loaded = nn.Linear(4, 4)
    ckpt.load_weights(latest, "m", loaded)
    assert torch.equal(loaded.weight, expected.weight)
    assert ckpt.load_trainer_state(latest)["step"] == 1
    save(tmp_path, 3, loaded)  # the next save cleans the dead temporary up
    assert not list(tmp_path.glob(".tmp-*"))


def test_pickled_code_is_refused(tmp_path):
    model = nn.Linear(2, 2)
    path = save(tmp_path, 1, model)
    torch.save({"step": 1, "hook": os.system}, path / "trainer.pt")  # a callable: code, not data
    with pytest.raises(GenkitError, match="refusing to load") as e:
        ckpt.load_trainer_state(path)
    assert "\n" not in str(e.value)


def test_not_a_checkpoint_and_shape_mismatch(tmp_path):
    with pytest.raises(GenkitError, match="not a genkit checkpoint"):
        ckpt.read_card(tmp_path)
    path = save(tmp_path, 1, nn.Linear(4, 3))
    with pytest.raises(GenkitError, match="shape"):
        ckpt.check_compatible(path, recipe="r", models={"m": nn.Linear(5, 3)})
    with pytest.raises(GenkitError, match="recipe 'r'"):
        ckpt.check_compatible(path, recipe="other", models={"m": nn.Linear(4, 3)})
    with pytest.raises(GenkitError, match="shape"):
        ckpt.load_weights(path, "m", nn.Linear(5, 3))


def test_a_kill_while_replacing_a_step_leaves_it_recoverable(tmp_path, monkeypatch):
    """A step saved again (a finished run started once more) is moved aside, then replaced: a kill in between
    leaves only ``.old-step_*``. The next writer puts it back; with the step present it just goes."""
    model = nn.Linear(4, 3)
    save(tmp_path, 5, model, keep=1)
    real_replace = os.replace

    def killed_after_moving_aside(src, dst):
        real_replace(src, dst)
        if ".old-" in str(dst):
            raise KeyboardInterrupt  # the kill

    monkeypatch.setattr(ckpt.os, "replace", killed_after_moving_aside)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 5, model, keep=1)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert ckpt.list_checkpoints(tmp_path) == [] and list(tmp_path.glob(".old-step_00000005-*"))
    ckpt.recover_interrupted(tmp_path)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000005"]
    assert ckpt.load_trainer_state(tmp_path / "step_00000005")["step"] == 5
    assert not list(tmp_path.glob(".old-*"))  # (the unfinished .tmp-* is this process's: the next one sweeps it)


def test_a_kill_while_pruning_never_lists_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(4, 3)
    save(tmp_path, 1, model, keep=1)

    def killed_mid_delete(path, *args, **kwargs):
        (path / "m.safetensors").unlink()  # half of it gone ...
        raise KeyboardInterrupt  # ... then the kill

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2, model, keep=1)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002"]  # not the half-deleted step 1
    save(tmp_path, 3, model, keep=1)  # the next save sweeps the remains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003"]


@pytest.mark.parametrize("damage", ["empty trainer.pt", "trainer.pt is a folder", "truncated trainer.pt",
                                    "empty safetensors", "config.json not UTF-8"])
def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path, damage):
    model = nn.Linear(4, 3)
    path = save(tmp_path, 1, model)
    if damage == "empty trainer.pt":
        (path / "trainer.pt").write_bytes(b"")
    elif damage == "trainer.pt is a folder":
        (path / "trainer.pt").unlink()
        (path / "trainer.pt").mkdir()
    elif damage == "truncated trainer.pt":
        data = (path / "trainer.pt").read_bytes()
        (path / "trainer.pt").write_bytes(data[: len(data) // 2])
    elif damage == "empty safetensors":
        (path / "m.safetensors").write_bytes(b"")
    else:
        (path / "config.json").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(GenkitError) as e:
        ckpt.read_card(path)
        ckpt.load_weights(path, "m", nn.Linear(4, 3))
        ckpt.load_trainer_state(path)
    message = str(e.value)
    assert "\n" not in message and ("damaged or incomplete" in message or "not a genkit checkpoint" in message)
    assert "more than tensors" not in message  # damage is not mistaken for pickled code
