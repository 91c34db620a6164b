"""Training objectives: each returns a :class:`LossOutput` keyed by optimizer name."""

from genkit.objectives.base import LossOutput, Objective

__all__ = ["LossOutput", "Objective"]
