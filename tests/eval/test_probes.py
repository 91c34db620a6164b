"""Feature probes: retrieval invariants (SPEC §7e5), k-NN and linear-probe accuracy on derived cases."""

import math

import pytest
import torch

from genkit.errors import GenkitError
from genkit.eval.probes import knn_accuracy, linear_probe, nearest_neighbours


def clusters(n_per_class, num_classes, dim, *, spread, generator):
    """Gaussian blobs (sd ``spread``) around centres 10 * e_c: features (n*K, dim), labels (n*K,)."""
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    centres = 10.0 * torch.eye(num_classes, dim)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels


def test_retrieval_invariants():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(300, 8, generator=g, dtype=torch.float64)
    queries = keys[::7]  # every query is also a key
    own = torch.arange(0, 300, 7)
    for metric in ("cosine", "euclidean"):
        nn_ = nearest_neighbours(queries, keys, 5, metric=metric, chunk_size=16)
        assert nn_.indices.shape == nn_.scores.shape == (len(queries), 5)
        assert torch.equal(nn_.indices[:, 0], own)  # each query is its own top-1 neighbour
        assert (nn_.scores[:, :-1] >= nn_.scores[:, 1:]).all()  # nearest first
        # chunking changes nothing
        assert torch.equal(nearest_neighbours(queries, keys, 5, metric=metric, chunk_size=1000).indices, nn_.indices)
    base = nearest_neighbours(queries, keys, 10, metric="cosine").indices
    scale = torch.rand(300, 1, generator=g, dtype=torch.float64) * 10 + 0.1  # per-vector positive rescaling
    assert torch.equal(nearest_neighbours(queries * scale[::7], keys * scale, 10, metric="cosine").indices, base)
    base = nearest_neighbours(queries, keys, 10, metric="euclidean").indices
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))  # orthogonal
    shift = torch.randn(8, generator=g, dtype=torch.float64)
    moved = nearest_neighbours(queries @ rotation + shift, keys @ rotation + shift, 10, metric="euclidean").indices
    assert torch.equal(moved, base)


def test_separable_clusters_are_classified_perfectly():
    """Blobs of sd 0.5 around centres 10*sqrt(2) apart: a point is nearer another centre only if its noise
    projects beyond 7.07 = 14 sd along the line joining them (probability ~1e-44): every probe is exact."""
    g = torch.Generator().manual_seed(1)
    train, train_y = clusters(50, 4, 6, spread=0.5, generator=g)
    test, test_y = clusters(25, 4, 6, spread=0.5, generator=g)
    for metric in ("cosine", "euclidean"):
        r = knn_accuracy(train, train_y, test, test_y, k=5, metric=metric, chunk_size=7)
        assert r.accuracy == 1.0 and r.n_train == 200 and r.n_test == 100 and r.chance == 0.25
    assert linear_probe(train, train_y, test, test_y).accuracy == 1.0


def test_labels_independent_of_features_score_chance():
    """Test labels drawn uniformly from 2 classes, independently of everything: whatever a probe predicts,
    its number of hits is Binomial(n, 1/2) exactly. n = 2000: sd 0.0112, 4 sd = 0.045 around 0.5."""
    g = torch.Generator().manual_seed(2)
    train, test = torch.randn(1000, 5, generator=g), torch.randn(2000, 5, generator=g)
    train_y, test_y = torch.randint(0, 2, (1000,), generator=g), torch.randint(0, 2, (2000,), generator=g)
    bound = 4 * math.sqrt(0.25 / 2000)
    for result in (knn_accuracy(train, train_y, test, test_y, k=15), linear_probe(train, train_y, test, test_y)):
        assert abs(result.accuracy - 0.5) < bound, result


def test_knn_vote_and_linear_probe_on_a_hand_built_case():
    # 1-D features, k = 3: the query at 0.9 has neighbours 1.0 (label 1), 0.7 (label 0), 1.2 (label 1) -> 1
    train = torch.tensor([[0.0], [0.7], [1.0], [1.2], [5.0]])
    train_y = torch.tensor([0, 0, 1, 1, 0])
    r = knn_accuracy(train, train_y, torch.tensor([[0.9]]), torch.tensor([1]), k=3, metric="euclidean")
    assert r.accuracy == 1.0
    # a tie (k = 2: labels 1 and 0) goes to the smaller label
    r = knn_accuracy(train, train_y, torch.tensor([[0.9]]), torch.tensor([0]), k=2, metric="euclidean")
    assert r.accuracy == 1.0
    # the linear probe on threshold data: x < 0 is class 0, x > 0 class 1
    x = torch.linspace(-1, 1, 40)[:, None]
    y = (x[:, 0] > 0).long()
    assert linear_probe(x, y, torch.tensor([[-0.5], [0.5]]), torch.tensor([0, 1])).accuracy == 1.0


def test_probe_errors():
    f, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.long)
    with pytest.raises(GenkitError, match="same D"):
        knn_accuracy(f, y, torch.randn(4, 2), y[:4])
    with pytest.raises(GenkitError, match="k must be between 1 and"):
        knn_accuracy(f, y, f, y, k=11)
    with pytest.raises(GenkitError, match="labels must be integers"):
        linear_probe(f, y.float(), f, y)
    with pytest.raises(GenkitError, match="unknown metric"):
        nearest_neighbours(f, f, 1, metric="manhattan")
