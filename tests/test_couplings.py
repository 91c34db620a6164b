import itertools

import pytest
import torch

from genkit.couplings import COUPLINGS, Pairs, independent_pairs, ot_assignment, ot_pairs
from genkit.errors import GenkitError


def _cost(p: Pairs) -> float:
    return (p.x_0 - p.x_1).pow(2).sum().item()


def test_independent_draws_standard_normal_with_the_generator():
    x_1 = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(1))
    p = independent_pairs(x_1, generator=torch.Generator().manual_seed(7))
    assert p.x_1 is x_1
    torch.testing.assert_close(p.x_0, torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(7)), rtol=0, atol=0)
    assert set(COUPLINGS) == {"independent", "ot"}


def test_ot_in_one_dimension_is_sorting():
    # For the squared cost on the line the monotone (sorted) pairing is the unique optimum.
    x_1 = 3.0 * torch.randn(64, 1, generator=torch.Generator().manual_seed(2)) + 1.0
    p = ot_pairs(x_1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.argsort(p.x_0[:, 0]), torch.argsort(x_1[:, 0]))
    assert p.x_1 is x_1


def test_ot_recovers_a_hidden_permutation():
    # x_1 is the very noise that ot_pairs will draw, shuffled and perturbed by 1e-3: the
    # shuffle is the optimal assignment (neighbours are ~1 apart in 5-D, perturbations 1e-3).
    n, d = 50, 5
    x_0 = torch.randn(n, d, generator=torch.Generator().manual_seed(4))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    x_1 = x_0[perm] + 1e-3 * torch.randn(n, d, generator=torch.Generator().manual_seed(6))
    p = ot_pairs(x_1, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(p.x_0, x_0[perm], rtol=0, atol=0)
    assert torch.equal(ot_assignment(x_0, x_1), perm)


def test_ot_is_the_optimal_permutation_of_the_same_draw():
    # Brute force over all 6! pairings, with images (B, C, H, W) to exercise the flattening.
    x_1 = torch.randn(6, 2, 2, 2, generator=torch.Generator().manual_seed(8))
    ind = independent_pairs(x_1, generator=torch.Generator().manual_seed(9))
    ot = ot_pairs(x_1, generator=torch.Generator().manual_seed(9))
    best = min(_cost(Pairs(ind.x_0[list(q)], x_1)) for q in itertools.permutations(range(6)))
    assert _cost(ot) == pytest.approx(best, rel=1e-6)
    assert _cost(ot) <= _cost(ind)
    # Same multiset of noise samples: a permutation of the independent draw.
    idx = ot_assignment(ind.x_0, x_1)
    assert sorted(idx.tolist()) == list(range(6))
    torch.testing.assert_close(ot.x_0, ind.x_0[idx], rtol=0, atol=0)


def test_ot_cost_never_exceeds_independent_on_larger_batches():
    for seed in range(3):
        x_1 = 2.0 + torch.randn(128, 2, generator=torch.Generator().manual_seed(seed))
        ind = independent_pairs(x_1, generator=torch.Generator().manual_seed(100 + seed))
        ot = ot_pairs(x_1, generator=torch.Generator().manual_seed(100 + seed))
        assert _cost(ot) < _cost(ind)
        torch.testing.assert_close(ot.x_0.sum(0), ind.x_0.sum(0))


def test_ot_keeps_dtype_and_returns_long_indices():
    x_1 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = ot_pairs(x_1, generator=torch.Generator().manual_seed(1))
    assert p.x_0.dtype == torch.float64 and p.x_0.shape == (8, 3)
    idx = ot_assignment(p.x_0, x_1)
    assert idx.dtype == torch.long and idx.device == x_1.device
    assert torch.equal(idx, torch.arange(8))  # already optimal: reassigning changes nothing


def test_ot_bad_input():
    with pytest.raises(GenkitError, match="same shape"):
        ot_assignment(torch.zeros(4, 2), torch.zeros(5, 2))
    with pytest.raises(GenkitError, match="non-finite"):
        ot_assignment(torch.zeros(3, 2), torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0]]))

