"""Feature-quality probes: nearest-neighbour retrieval, k-NN accuracy and a linear probe.

Given features of a labelled train split and a test split, the probes say how much label
information the features hold without fine-tuning the network that made them:

* :func:`nearest_neighbours` -- top-k keys of each query by cosine similarity or Euclidean distance,
  in chunks of queries so that memory stays ``O(chunk_size * n_keys)``;
* :func:`knn_accuracy` -- majority vote of the k nearest train features;
* :func:`linear_probe` -- multinomial logistic regression on standardised features, trained full
  batch with L-BFGS from zero weights (convex, deterministic: no seed needed).

Features are ``(N, D)`` float tensors, labels ``(N,)`` integer tensors in ``[0, num_classes)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from genkit.errors import GenkitError

__all__ = ["METRICS", "Metric", "Neighbours", "ProbeResult", "knn_accuracy", "linear_probe", "nearest_neighbours"]

Metric = Literal["cosine", "euclidean"]


def _cosine(queries: Tensor, keys: Tensor) -> Tensor:
    return F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T  # (Q, N): larger is nearer


def _neg_euclidean(queries: Tensor, keys: Tensor) -> Tensor:
    return -torch.cdist(queries, keys)  # (Q, N): larger is nearer


METRICS = {"cosine": _cosine, "euclidean": _neg_euclidean}


@dataclass(frozen=True)
class Neighbours:
    indices: Tensor
    """``(Q, k)`` int64 key indices, nearest first"""
    scores: Tensor
    """``(Q, k)``: cosine similarity, or minus the Euclidean distance (larger is nearer)"""


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    """fraction of test features whose predicted label is right"""
    chance: float
    """share of the most frequent test label: the accuracy of always guessing it"""
    n_train: int
    n_test: int


def _check_features(train: Tensor, test: Tensor, train_y: Tensor | None = None, test_y: Tensor | None = None) -> None:
    if train.dim() != 2 or test.dim() != 2 or train.shape[1] != test.shape[1]:
        raise GenkitError(f"features must be (N, D) with the same D, got {tuple(train.shape)} and {tuple(test.shape)}")
    if len(train) == 0 or len(test) == 0:
        raise GenkitError("probes need at least one train and one test feature")
    for f, y, name in ((train, train_y, "train"), (test, test_y, "test")):
        if y is not None and (y.shape != (len(f),) or y.is_floating_point()):
            raise GenkitError(f"{name} labels must be integers of shape ({len(f)},), got {y.dtype} {tuple(y.shape)}")


def nearest_neighbours(queries: Tensor, keys: Tensor, k: int, *, metric: Metric = "cosine",
                       chunk_size: int = 1024) -> Neighbours:
    """The ``k`` nearest ``keys: (N, D)`` of each of ``queries: (Q, D)``, nearest first.

    Cosine ranking is unchanged by rescaling any vector; Euclidean ranking by a common rotation or
    translation of queries and keys. A query that is also a key is its own nearest neighbour (ties
    aside). Computed ``chunk_size`` queries at a time, in float32.
    """
    _check_features(keys, queries)
    if metric not in METRICS:
        raise GenkitError(f"unknown metric {metric!r}: use {' or '.join(map(repr, METRICS))}")
    if not 1 <= k <= len(keys):
        raise GenkitError(f"k must be between 1 and the number of keys ({len(keys)}), got {k}")
    if chunk_size < 1:
        raise GenkitError(f"chunk_size must be >= 1, got {chunk_size}")
    keys = keys.float()
    scores, indices = [], []
    for lo in range(0, len(queries), chunk_size):
        s, i = METRICS[metric](queries[lo : lo + chunk_size].float(), keys).topk(k, dim=1)  # (q, N) -> (q, k)
        scores.append(s)
        indices.append(i)
    return Neighbours(torch.cat(indices), torch.cat(scores))


def _chance(test_y: Tensor) -> float:
    return float(torch.bincount(test_y.long()).max()) / len(test_y)


def knn_accuracy(train: Tensor, train_y: Tensor, test: Tensor, test_y: Tensor, *, k: int = 10,
                 metric: Metric = "cosine", chunk_size: int = 1024) -> ProbeResult:
    """Accuracy of the majority label among each test feature's ``k`` nearest train features.

    train: ``(N, D)``, train_y: ``(N,)``; test: ``(M, D)``, test_y: ``(M,)``. Ties between labels go to
    the smaller label.
    """
    _check_features(train, test, train_y, test_y)
    nn_ = nearest_neighbours(test, train, k, metric=metric, chunk_size=chunk_size)
    votes = train_y.to(nn_.indices.device).long()[nn_.indices]  # (M, k) labels of the neighbours
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    counts = F.one_hot(votes, num_classes).sum(dim=1)  # (M, k, K) -> (M, K)
    predicted = counts.argmax(dim=1)  # first maximum: the smaller label
    accuracy = float((predicted == test_y.to(predicted.device)).float().mean())
    return ProbeResult(accuracy, _chance(test_y), len(train), len(test))


def linear_probe(train: Tensor, train_y: Tensor, test: Tensor, test_y: Tensor, *, weight_decay: float = 1e-4,
                 max_iter: int = 200) -> ProbeResult:
    """Test accuracy of a multinomial logistic regression fit on the train features.

    train: ``(N, D)``, train_y: ``(N,)``; test: ``(M, D)``, test_y: ``(M,)``. Features are standardised
    with the train split's mean and standard deviation; the loss is mean cross-entropy plus
    ``weight_decay/2 * ||W||^2`` (bias free), minimised by full-batch L-BFGS (strong-Wolfe line search,
    at most ``max_iter`` iterations) from zero weights, in float32 on the features' device.
    """
    _check_features(train, test, train_y, test_y)
    if weight_decay < 0 or max_iter < 1:
        raise GenkitError(f"linear_probe needs weight_decay >= 0 and max_iter >= 1, got {weight_decay}, {max_iter}")
    train, test = train.float(), test.float().to(train.device)
    train_y = train_y.to(train.device).long()
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-6)
    xs = (train - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(train.shape[1], num_classes, device=train.device, requires_grad=True)
    b = torch.zeros(num_classes, device=train.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, train_y) + 0.5 * weight_decay * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        predicted = (((test - mean) / std) @ w + b).argmax(dim=1)
    accuracy = float((predicted == test_y.to(predicted.device)).float().mean())
    return ProbeResult(accuracy, _chance(test_y), len(train), len(test))
