"""PNG figures: 2-D scatter plots, flow trajectories and image grids.

matplotlib and torchvision are imported inside the functions. Figures are drawn on a
standalone Agg canvas (no pyplot global state), and every file is written to a
temporary name in the target folder and then renamed, so a reader never sees a
half-written PNG.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from genkit.errors import GenkitError

__all__ = ["CurvePanel", "save_curve_panels", "save_curves", "save_image_grid", "save_scatter", "save_trajectories"]

PathLike = str | os.PathLike


def save_scatter(
    samples: Tensor, path: PathLike, *, reference: Tensor | None = None, title: str = ""
) -> None:
    """Scatter plot of 2-D points.

    Args:
        samples: ``(N, 2)`` points, drawn in front.
        path: output PNG file (parent folders are created).
        reference: optional ``(M, 2)`` points (e.g. data) drawn behind in grey.
        title: figure title.
    """
    _check_points(samples, "samples")
    if reference is not None:
        _check_points(reference, "reference")

    def draw(ax) -> None:
        if reference is not None:
            r = _numpy(reference)
            ax.scatter(r[:, 0], r[:, 1], s=2, c="0.7", alpha=0.5, label="reference", rasterized=True)
        s = _numpy(samples)
        ax.scatter(s[:, 0], s[:, 1], s=2, c="C0", alpha=0.6, label="samples", rasterized=True)
        if reference is not None:
            ax.legend(loc="upper right", markerscale=4)
        ax.set_aspect("equal", adjustable="datalim")

    _save_figure(draw, path, title)


def save_trajectories(xs: Tensor, path: PathLike, *, title: str = "", max_paths: int = 256) -> None:
    """Trajectories of 2-D particles.

    Args:
        xs: ``(T, B, 2)`` states over time (e.g. ``ODESampler.solve(x_0, keep=T).xs``).
        path: output PNG file.
        title: figure title.
        max_paths: draw at most this many of the ``B`` paths (the first ones).
    """
    if xs.dim() != 3 or xs.shape[2] != 2 or xs.shape[0] < 2:
        raise GenkitError(f"trajectories must have shape (T >= 2, B, 2), got {tuple(xs.shape)}")
    if max_paths < 1:
        raise GenkitError(f"max_paths must be >= 1, got {max_paths}")
    p = _numpy(xs[:, :max_paths])

    def draw(ax) -> None:
        ax.plot(p[:, :, 0], p[:, :, 1], c="0.5", lw=0.5, alpha=0.5)
        ax.scatter(p[0, :, 0], p[0, :, 1], s=3, c="C0", label="t = 0", zorder=3)
        ax.scatter(p[-1, :, 0], p[-1, :, 1], s=3, c="C3", label="t = 1", zorder=3)
        ax.legend(loc="upper right", markerscale=3)
        ax.set_aspect("equal", adjustable="datalim")

    _save_figure(draw, path, title)


def save_curves(
    curves: dict[str, tuple[list[float], list[float]]], path: PathLike, *, xlabel: str, ylabel: str,
    title: str = "", logx: bool = False, logy: bool = False, hlines: dict[str, float] | None = None,
) -> None:
    """Line plot of named curves ``{label: (xs, ys)}`` with markers (e.g. FID against NFE), and labelled
    horizontal reference lines ``hlines`` (e.g. the data's own FID floor)."""
    panel = CurvePanel(curves, xlabel=xlabel, ylabel=ylabel, logx=logx, logy=logy, hlines=hlines or {})
    _check_panel(panel, "save_curves")
    _save_figure(panel.draw, path, title)


@dataclass(frozen=True)
class CurvePanel:
    """One panel of :func:`save_curve_panels`: named curves ``{label: (xs, ys)}`` and the axes' labels."""

    curves: dict[str, tuple[list[float], list[float]]]
    xlabel: str
    ylabel: str
    logx: bool = False
    logy: bool = False
    """a log y axis (FID spans orders of magnitude between 1 and 100 steps)"""
    vlines: tuple[float, ...] = ()
    """x positions marked by dashed vertical lines (e.g. a budget)"""
    hlines: dict[str, float] = field(default_factory=dict)
    """labelled y values marked by dotted horizontal lines (e.g. the train-vs-test FID floor)"""
    title: str = ""

    def draw(self, ax) -> None:
        for label, (xs, ys) in self.curves.items():
            ax.plot(xs, ys, marker="o", label=label)
        for x in self.vlines:
            ax.axvline(x, color="0.4", ls="--", lw=1)
        for label, y in self.hlines.items():
            ax.axhline(y, color="0.3", ls=":", lw=1.2, label=label)
        if self.logx:
            ax.set_xscale("log")
        values = [y for _, ys in self.curves.values() for y in ys] + list(self.hlines.values())
        if self.logy and min(values) > 0:  # (a zero or negative value keeps the linear axis)
            ax.set_yscale("log")
        ax.set_xlabel(self.xlabel)
        ax.set_ylabel(self.ylabel)
        if self.title:
            ax.set_title(self.title)
        ax.grid(True, alpha=0.3)
        ax.legend()


def save_curve_panels(panels: Sequence[CurvePanel], path: PathLike, *, title: str = "") -> None:
    """Side-by-side line plots in one PNG (e.g. FID against steps and against seconds), one per panel."""
    if not panels:
        raise GenkitError("save_curve_panels needs at least one panel")
    for panel in panels:
        _check_panel(panel, "save_curve_panels")

    def draw(*axes) -> None:
        for panel, ax in zip(panels, axes):
            panel.draw(ax)

    _save_figure(draw, path, title, panels=len(panels))


def _check_panel(panel: CurvePanel, who: str) -> None:
    if not panel.curves or any(len(xs) != len(ys) or not xs for xs, ys in panel.curves.values()):
        raise GenkitError(f"{who} needs at least one curve with as many xs as ys")


def save_image_grid(images: Tensor, path: PathLike, *, nrow: int | None = None) -> None:
    """Save images as one PNG grid.

    Args:
        images: ``(B, C, H, W)`` float in ``[-1, 1]`` (values outside are clipped), C in {1, 3}.
        path: output PNG file.
        nrow: images per row; default ``ceil(sqrt(B))`` (a square-ish grid).

    Pixels are :func:`genkit.data.images.to_uint8` of the images, the library's one conversion
    out of ``[-1, 1]`` (the one FID uses too); tiles are separated by 2 black pixels.
    """
    from PIL import Image
    from torchvision.utils import make_grid

    from genkit.data.images import to_uint8

    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise GenkitError(f"images must have shape (B, C in {{1, 3}}, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise GenkitError(f"images must be float in [-1, 1], got {images.dtype}")
    if nrow is None:
        nrow = math.ceil(math.sqrt(images.shape[0]))
    grid = make_grid(to_uint8(images.detach().cpu()), nrow=nrow, padding=2)  # uint8 (3, H', W'); (C, H, W) for B = 1
    grid = grid.expand(3, -1, -1) if grid.shape[0] == 1 else grid
    with _atomic_png(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="png")


def _save_figure(draw: Callable, path: PathLike, title: str, *, panels: int = 1) -> None:
    """``draw(ax_1, ..., ax_panels)`` on a row of 5 x 5 inch axes, then an atomic PNG write."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * panels, 5), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    draw(*axes)
    if title and panels == 1:
        axes[0].set_title(title)
    elif title:
        fig.suptitle(title)
    fig.tight_layout()
    with _atomic_png(path) as tmp:
        fig.savefig(tmp, format="png")


@contextmanager
def _atomic_png(path: PathLike) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; rename it onto ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a figure is for everyone to read
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_points(x: Tensor, name: str) -> None:
    if x.dim() != 2 or x.shape[1] != 2:
        raise GenkitError(f"{name} must have shape (N, 2), got {tuple(x.shape)}")


def _numpy(x: Tensor):
    return x.detach().to(device="cpu", dtype=torch.float32).numpy()
