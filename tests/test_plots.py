import pytest
import torch

from genkit.errors import GenkitError
from genkit.plots import save_image_grid, save_scatter, save_trajectories

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    data = path.read_bytes()
    assert len(data) > 100 and data[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_save_scatter(tmp_path):
    g = torch.Generator().manual_seed(0)
    out = tmp_path / "sub" / "scatter.png"
    save_scatter(torch.randn(100, 2, generator=g), out, reference=torch.randn(50, 2, generator=g), title="s")
    _check_png(out)


def test_save_trajectories(tmp_path):
    xs = torch.cumsum(torch.randn(5, 300, 2, generator=torch.Generator().manual_seed(1)), dim=0)
    out = tmp_path / "traj.png"
    save_trajectories(xs, out, title="t", max_paths=20)
    _check_png(out)


def test_save_image_grid(tmp_path):
    from PIL import Image

    images = torch.linspace(-1, 1, 10 * 3 * 8 * 8).view(10, 3, 8, 8)
    out = tmp_path / "grid.png"
    save_image_grid(images, out, nrow=5)
    _check_png(out)
    with Image.open(out) as im:
        assert im.size == (5 * 10 + 2, 2 * 10 + 2)  # 5 x 2 tiles of 8 px with 2 px padding
    save_image_grid(torch.full((1, 1, 4, 4), -1.0), out)  # overwrites in place
    with Image.open(out) as im:
        assert im.convert("L").getextrema() == (0, 0)  # -1 maps to black


def test_save_image_grid_pixels_are_to_uint8(tmp_path):
    """The grid holds exactly genkit.data.images.to_uint8 of the image (the one conversion out of [-1, 1]):
    steps of 1/255 land on the half levels, where torchvision's own rounding (floor(255 x + 0.5)) differs."""
    import numpy as np
    from PIL import Image

    from genkit.data.images import to_uint8

    x = torch.linspace(-1, 1, 511).view(1, 1, 7, 73)
    images = torch.cat([x, -x])
    out = tmp_path / "grid.png"
    save_image_grid(images, out, nrow=2)
    with Image.open(out) as im:
        grid = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)  # (3, 2 + 7 + 2, 2 + 2 * (73 + 2))
    assert grid.shape == (3, 11, 152)
    want = to_uint8(images).expand(2, 3, 7, 73)
    assert torch.equal(grid[:, 2:9, 2:75], want[0]) and torch.equal(grid[:, 2:9, 77:150], want[1])
    save_image_grid(x, out)  # one image: no padding
    with Image.open(out) as im:
        assert torch.equal(torch.from_numpy(np.array(im.convert("L"))), to_uint8(x)[0, 0])


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(GenkitError):
        save_scatter(torch.zeros(10, 3), tmp_path / "bad.png")
    with pytest.raises(GenkitError):
        save_image_grid(torch.zeros(2, 3, 4), tmp_path / "bad.png")
    with pytest.raises(GenkitError):
        save_trajectories(torch.zeros(1, 4, 2), tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    from PIL import Image

    out = tmp_path / "grid.png"
    save_image_grid(torch.zeros(1, 1, 4, 4), out)
    before = out.read_bytes()

    def broken_save(image, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image_grid(torch.ones(1, 1, 4, 4), out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_curve_panel_log_y_and_reference_lines():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genkit.plots import CurvePanel

    fig, (a, b) = plt.subplots(1, 2)
    CurvePanel({"fid": ([1, 10, 100], [400.0, 3.5, 1.6])}, xlabel="NFE", ylabel="FID", logx=True, logy=True,
               hlines={"floor": 0.16}).draw(a)
    assert a.get_yscale() == "log" and a.get_xscale() == "log"
    assert [line.get_ydata()[0] for line in a.get_lines()[1:]] == [0.16]  # the floor, after the curve
    assert "floor" in [t.get_text() for t in a.get_legend().get_texts()]
    CurvePanel({"fid": ([1, 2], [0.0, 1.0])}, xlabel="x", ylabel="y", logy=True).draw(b)  # a zero: linear
    assert b.get_yscale() == "linear"
    plt.close(fig)
