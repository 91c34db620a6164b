"""Two-dimensional toy distributions and a seeded, resumable stream of their batches.

Every sampler returns ``(n, 2)`` float32 points of roughly unit scale (the standard
deviation of each coordinate lies in about ``[0.5, 3]``). The shapes follow the ones
common in the flow literature (FFJORD, flow matching), with the constants named below.
"""

import math
from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor

from genkit.errors import GenkitError
from genkit.seeding import derive_seed

ToyName = Literal["8gaussians", "moons", "checkerboard", "spirals"]

# 8gaussians (FFJORD): centres on a circle of radius 4, noise std 0.5, all divided by sqrt(2).
GAUSSIANS_RADIUS = 4.0 / math.sqrt(2.0)
GAUSSIANS_STD = 0.5 / math.sqrt(2.0)
# moons (scikit-learn's make_moons, noise 0.1), then x -> (x - MOONS_SHIFT) * MOONS_SCALE.
MOONS_NOISE = 0.1
MOONS_SHIFT = (0.5, 0.25)
MOONS_SCALE = 2.0
# spirals: arm k in {0, 1} is theta -> (-1)^k * (theta / 3) * (cos theta, sin theta),
# theta in [0, 3 pi] (one and a half turns), plus Gaussian noise of std SPIRALS_NOISE.
SPIRALS_TURN = 3.0 * math.pi
SPIRALS_SCALE = 1.0 / 3.0
SPIRALS_NOISE = 0.1


def _eight_gaussians(n: int, generator: torch.Generator | None) -> Tensor:
    """(n, 2): mixture of 8 equal Gaussians centred at angles k pi / 4 on a circle."""
    k = torch.randint(0, 8, (n,), generator=generator)
    angle = k.to(torch.float32) * (math.pi / 4.0)
    centres = GAUSSIANS_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + GAUSSIANS_STD * torch.randn(n, 2, generator=generator)


def _moons(n: int, generator: torch.Generator | None) -> Tensor:
    """(n, 2): two interleaved half circles (upper: unit circle; lower: centre (1, 0.5))."""
    t = math.pi * torch.rand(n, generator=generator)
    lower = torch.rand(n, generator=generator) < 0.5
    x = torch.where(lower, 1.0 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    points = torch.stack([x, y], dim=1) + MOONS_NOISE * torch.randn(n, 2, generator=generator)
    return (points - torch.tensor(MOONS_SHIFT)) * MOONS_SCALE


def _checkerboard(n: int, generator: torch.Generator | None) -> Tensor:
    """(n, 2): uniform on the 8 unit squares of [-2, 2)^2 with floor(x) + floor(y) even."""
    x = 4.0 * torch.rand(n, generator=generator) - 2.0
    row = 2.0 * torch.randint(0, 2, (n,), generator=generator).to(torch.float32) - 2.0
    y = torch.rand(n, generator=generator) + row + torch.remainder(torch.floor(x), 2.0)
    return torch.stack([x, y], dim=1)


def _spirals(n: int, generator: torch.Generator | None) -> Tensor:
    """(n, 2): two interleaved spirals, the second the first rotated by pi."""
    # sqrt makes the density along the arm roughly uniform in arc length.
    theta = SPIRALS_TURN * torch.sqrt(torch.rand(n, generator=generator))
    sign = 1.0 - 2.0 * torch.randint(0, 2, (n,), generator=generator).to(torch.float32)
    radius = SPIRALS_SCALE * theta * sign
    points = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=1)
    return points + SPIRALS_NOISE * torch.randn(n, 2, generator=generator)


TOY_DATASETS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "8gaussians": _eight_gaussians,
    "moons": _moons,
    "checkerboard": _checkerboard,
    "spirals": _spirals,
}


def _toy_fn(name: str) -> Callable[[int, torch.Generator | None], Tensor]:
    if name not in TOY_DATASETS:
        known = ", ".join(TOY_DATASETS)
        raise GenkitError(f"unknown toy dataset {name!r}; use one of: {known}")
    return TOY_DATASETS[name]


def _check_count(what: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GenkitError(f"{what} must be an integer >= {minimum}, got {value!r}")


def sample_toy(name: str, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` points of the toy set ``name``.

    Returns ``(n, 2)`` float32 on the CPU. ``generator`` (a CPU generator) is the only
    source of randomness; ``None`` uses torch's global generator.
    Raises :class:`GenkitError` for an unknown name (listing the known ones) or ``n < 0``.
    """
    fn = _toy_fn(name)
    _check_count("n", n, 0)
    return fn(n, generator).to(torch.float32).contiguous()


class ToyStream:
    """Infinite, seeded, resumable stream of ``(batch_size, 2)`` float32 batches.

    Batch ``i`` on rank ``r`` is drawn from a fresh CPU ``torch.Generator`` seeded with
    ``derive_seed(seed, "toy", r, i)`` (:mod:`genkit.seeding`), then moved to ``device``:
    it depends only on ``(name, batch_size, seed, rank, i)``, so resuming needs only the
    counter (``state_dict() == {"index": i}``) and results do not depend on the device.
    """

    def __init__(
        self,
        name: str,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self._fn = _toy_fn(name)
        _check_count("batch_size", batch_size, 1)
        _check_count("rank", rank, 0)
        self.name = name
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.device = torch.device(device)
        self.index = 0

    def __iter__(self) -> "ToyStream":
        return self

    def __next__(self) -> Tensor:
        """The next batch: ``(batch_size, 2)`` float32 on ``device``."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "toy", self.rank, self.index))
        batch = self._fn(self.batch_size, generator).to(torch.float32)
        self.index += 1
        return batch.to(self.device)

    def state_dict(self) -> dict[str, int]:
        """``{"index": number of batches already taken}``."""
        return {"index": self.index}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume from a :meth:`state_dict`; the next batch is batch ``state["index"]``."""
        if "index" not in state:
            raise GenkitError(f"ToyStream state needs the key 'index', got keys {sorted(state)}")
        index = state["index"]
        if isinstance(index, Tensor):
            index = int(index.item())
        _check_count("ToyStream state 'index'", index, 0)
        self.index = index
