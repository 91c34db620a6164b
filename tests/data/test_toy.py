"""Toy 2-D sets: contracts, a property that identifies each set, and ToyStream resumability."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genkit.data import TOY_DATASETS, ToyStream, sample_toy
from genkit.data import toy
from genkit.errors import GenkitError

N = 4000  # enough that every statistic below has a standard error of ~1% or less


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_contract_shape_dtype_scale_determinism(name):
    x = sample_toy(name, N, generator=_gen(0))
    assert x.shape == (N, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    std = x.std(dim=0)
    assert ((std > 0.5) & (std < 3.0)).all(), std
    assert torch.equal(x, sample_toy(name, N, generator=_gen(0)))
    assert not torch.allclose(x, sample_toy(name, N, generator=_gen(1)))
    assert sample_toy(name, 0).shape == (0, 2)


def test_unknown_name_and_bad_n():
    with pytest.raises(GenkitError, match="8gaussians.*moons.*checkerboard.*spirals"):
        sample_toy("swissroll", 10)
    with pytest.raises(GenkitError, match="n must be"):
        sample_toy("moons", -1)


def test_eight_gaussians_clusters():
    x = sample_toy("8gaussians", N, generator=_gen(0))
    angle = torch.arange(8) * (math.pi / 4)
    centres = toy.GAUSSIANS_RADIUS * torch.stack([angle.cos(), angle.sin()], dim=1)
    dist, nearest = torch.cdist(x, centres).min(dim=1)
    # Distance to the own centre of an isotropic 2-D Gaussian is Rayleigh(std): mean
    # std * sqrt(pi / 2) (clusters are 6 std apart, so nearest centre = own centre).
    expected = toy.GAUSSIANS_STD * math.sqrt(math.pi / 2)
    assert abs(dist.mean().item() / expected - 1) < 0.05  # standard error ~0.8%
    share = torch.bincount(nearest, minlength=8).float() / N
    assert ((share > 0.10) & (share < 0.15)).all(), share  # 1/8 = 0.125, s.e. 0.005


def _distance_to_curves(x, curves):
    """(N,) distance of each point to the nearest densely sampled curve, and its index."""
    return torch.stack([torch.cdist(x, c).min(dim=1).values for c in curves], dim=1).min(dim=1)


@pytest.mark.parametrize("name", ["moons", "spirals"])
def test_curves_points_lie_near_their_noiseless_support(name):
    x = sample_toy(name, N, generator=_gen(0))
    t = torch.linspace(0, 1, 5001)
    if name == "moons":
        x = x / toy.MOONS_SCALE + torch.tensor(toy.MOONS_SHIFT)  # back to make_moons units
        s = math.pi * t
        upper = torch.stack([s.cos(), s.sin()], dim=1)
        curves, noise = [upper, torch.tensor([1.0, 0.5]) - upper], toy.MOONS_NOISE
    else:
        theta = toy.SPIRALS_TURN * t
        arm = toy.SPIRALS_SCALE * theta[:, None] * torch.stack([theta.cos(), theta.sin()], dim=1)
        curves, noise = [arm, -arm], toy.SPIRALS_NOISE
    dist, which = _distance_to_curves(x, curves)
    # Isotropic noise of std s off a smooth curve: the distance is |normal component|, mean
    # s * sqrt(2 / pi) (s.e. ~1.2% at N=4000; ends and curvature add ~2%).
    ratio = dist.mean().item() / (noise * math.sqrt(2 / math.pi))
    assert 0.9 < ratio < 1.1, ratio
    assert 0.45 < which.float().mean().item() < 0.55  # both arms equally likely (s.e. 0.008)


def test_checkerboard_points_in_black_squares():
    x = sample_toy("checkerboard", N, generator=_gen(0))
    assert ((x >= -2) & (x < 2)).all()
    cell = torch.floor(x).long()
    assert (cell.sum(dim=1) % 2 == 0).all()
    ids = (cell[:, 0] + 2) * 4 + (cell[:, 1] + 2)
    share = torch.bincount(ids, minlength=16).float() / N
    black = share[share > 0]
    assert len(black) == 8 and ((black > 0.10) & (black < 0.15)).all(), share


def test_stream_resume_exact():
    ref = ToyStream("moons", 16, seed=3)
    batches = [next(ref) for _ in range(6)]
    first = ToyStream("moons", 16, seed=3)
    for _ in range(4):
        next(first)
    state = first.state_dict()
    assert state == {"index": 4}
    resumed = ToyStream("moons", 16, seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed), batches[4])
    assert torch.equal(next(resumed), batches[5])


def test_stream_batches_ranks_and_seeds_differ():
    a = ToyStream("8gaussians", 32, seed=0, rank=0)
    b = ToyStream("8gaussians", 32, seed=0, rank=1)
    c = ToyStream("8gaussians", 32, seed=1, rank=0)
    xa, xb, xc = next(a), next(b), next(c)
    assert xa.shape == (32, 2) and xa.dtype == torch.float32 and xa.device.type == "cpu"
    assert not torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert not torch.equal(xa, next(a))
    assert iter(a) is a


def test_stream_bad_input():
    with pytest.raises(GenkitError, match="unknown toy dataset"):
        ToyStream("nope", 8, seed=0)
    with pytest.raises(GenkitError, match="batch_size"):
        ToyStream("moons", 0, seed=0)
    stream = ToyStream("moons", 8, seed=0)
    with pytest.raises(GenkitError, match="index"):
        stream.load_state_dict({"epoch": 1})
    with pytest.raises(GenkitError, match="index"):
        stream.load_state_dict({"index": -2})


def test_import_is_light():
    code = "import sys, genkit.data; assert 'torchvision' not in sys.modules, 'torchvision imported'"
    # A fresh interpreter, run from the repository root so ``import genkit`` finds the package.
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
