"""Codebook statistics on hand-computed histograms."""

import math

import pytest
import torch

from genkit.errors import GenkitError
from genkit.eval.codebook import code_histogram, codebook_stats, dead_codes, perplexity, usage_fraction


def test_histogram_counts_every_index_of_any_shape():
    indices = torch.tensor([[0, 2, 2], [5, 2, 0]])
    assert torch.equal(code_histogram(indices, 6), torch.tensor([2.0, 0, 3, 0, 0, 1]))
    assert torch.equal(code_histogram(torch.zeros(0, dtype=torch.long), 3), torch.zeros(3))


def test_uniform_over_used_codes_has_perplexity_equal_to_their_number():
    counts = torch.tensor([5.0, 0, 5, 5, 0, 5, 0, 0])  # 4 of 8 codes, equally often
    assert usage_fraction(counts) == 0.5
    assert torch.isclose(perplexity(counts), torch.tensor(4.0))
    assert torch.equal(dead_codes(counts), torch.tensor([1, 4, 6, 7]))
    s = codebook_stats(counts)
    assert (s.num_codes, s.used, s.dead, s.usage) == (8, 4, 4, 0.5) and math.isclose(s.perplexity, 4.0, rel_tol=1e-6)


def test_skewed_histogram_perplexity_by_hand():
    # p = (1/2, 1/4, 1/4): H = 1/2 log 2 + 2 * 1/4 log 4 = 1.5 log 2, exp(H) = 2^1.5
    counts = torch.tensor([2.0, 1, 1])
    assert torch.isclose(perplexity(counts), torch.tensor(2.0**1.5))
    assert perplexity(torch.tensor([0.0, 7, 0])) == 1.0  # one code takes everything
    assert perplexity(torch.zeros(4)) == 0.0 and usage_fraction(torch.zeros(4)) == 0.0  # nothing selected


def test_bad_input_is_a_one_line_error():
    with pytest.raises(GenkitError, match=r"in \[0, 4\), got \[0, 4\]"):
        code_histogram(torch.tensor([0, 4]), 4)
    with pytest.raises(GenkitError, match="int64"):
        code_histogram(torch.tensor([0.0]), 4)
    with pytest.raises(GenkitError, match=r"\(K,\)"):
        perplexity(torch.ones(2, 2))
