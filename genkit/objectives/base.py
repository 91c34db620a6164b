"""What every objective returns, and the protocol the Trainer calls."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LossOutput:
    """Losses keyed by optimizer name, plus detached scalars for the logs.

    ``losses`` holds one scalar per optimizer the Trainer asked for (see
    :class:`Objective`): ``{"model": ...}`` or ``{"generator": ..., "critic": ...}``.
    ``metrics`` holds extra detached scalars (no graph) that are only logged.
    """

    losses: Mapping[str, Tensor]
    metrics: Mapping[str, Tensor] = field(default_factory=dict)


class Objective(Protocol):
    """A training objective: models and a batch in, losses per optimizer out.

    ``need`` names the optimizers whose losses are wanted; an objective may skip computing
    the others (a generator loss on a critic-only step). The Trainer asks for one optimizer
    per call and steps it before the next call (alternating updates); a caller may also ask
    for several at once, on the same parameters.
    ``generator`` is the source of all randomness the objective draws.

    An objective that carries state between calls (e.g. frozen particle targets reused
    for several generator steps) also defines ``state_dict() -> dict`` of tensors and plain
    values and ``load_state_dict(state)``; the Trainer saves it in every checkpoint.
    """

    def __call__(
        self,
        models: Mapping[str, nn.Module],
        batch: Any,
        *,
        need: frozenset[str],
        generator: torch.Generator | None = None,
    ) -> LossOutput: ...
