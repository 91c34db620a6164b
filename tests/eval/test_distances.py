import math

import numpy as np
import pytest
import torch
from scipy import stats

from genkit.errors import GenkitError
from genkit.eval.distances import energy_distance


def _normal(n, d, seed, shift=0.0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    x[:, 0] += shift
    return x


def _mean_norm(d, m, s2):
    """E||N(m e_1, s2 I_d)||: sqrt(s2) times the mean of a noncentral chi with noncentrality m^2 / s2."""
    if m == 0:
        return math.sqrt(s2) * stats.chi(df=d).mean()
    return math.sqrt(s2) * stats.ncx2(df=d, nc=m**2 / s2).expect(np.sqrt)


def test_zero_on_identical_sets_and_permutations():
    x = _normal(300, 3, 0)
    assert energy_distance(x, x).item() == 0.0
    assert energy_distance(x, x[torch.randperm(300, generator=torch.Generator().manual_seed(1))]).item() < 1e-12
    d = energy_distance(x, x)
    assert d.dim() == 0 and d.dtype == torch.float64


def test_symmetric_and_positive():
    x, y = _normal(200, 2, 1), _normal(150, 2, 2, shift=0.3)
    torch.testing.assert_close(energy_distance(x, y), energy_distance(y, x), rtol=1e-12, atol=1e-14)
    assert energy_distance(x, y) > 0
    assert energy_distance(x, x[:50]) > 0  # equal support, different multisets


def test_hand_computation():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 2.0]])
    # E|X-Y| = (2 + sqrt 5) / 2, E|X-X'| = (0 + 1 + 1 + 0) / 4, E|Y-Y'| = 0.
    expected = (2 + math.sqrt(5)) - 0.5
    assert energy_distance(x, y).item() == pytest.approx(expected, rel=1e-12)


def test_gaussian_closed_form_and_monotone():
    # N(0, I) vs N(m e_1, I) in d = 2: D = 2 E||N(m, 2I)|| - 2 E||N(0, 2I)||. The V-statistic's mean is
    # D + E|X-X'|/N + E|Y-Y'|/M; its seeded std at N = M = 2000 is ~0.025 (10 seeds), the tolerance 0.1 is 4 std.
    n, d = 2000, 2
    x = _normal(n, d, 10)
    values = []
    for m in (0.5, 1.0, 2.0):
        y = _normal(n, d, 11, shift=m)
        closed = 2 * _mean_norm(d, m, 2.0) - 2 * _mean_norm(d, 0.0, 2.0)
        bias = 2 * _mean_norm(d, 0.0, 2.0) / n
        values.append(energy_distance(x, y).item())
        assert values[-1] == pytest.approx(closed + bias, abs=0.1)
    assert values[0] < values[1] < values[2]
    assert values[2] > 1.4  # closed form 1.583


def test_computed_in_float64():
    x, y = _normal(100, 3, 5), _normal(80, 3, 6, shift=0.01)
    d = energy_distance(x, y)
    assert d.dtype == torch.float64
    assert d.item() == energy_distance(x.double(), y.double()).item()


def test_bad_shapes():
    with pytest.raises(GenkitError):
        energy_distance(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(GenkitError):
        energy_distance(torch.zeros(3), torch.zeros(3))
