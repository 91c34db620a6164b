"""A plain Adam loop for the tests that train small flows step by step (not collected: no test_ prefix)."""

import torch

NEED = frozenset({"model"})


def train_steps(model, objective, next_batch, steps: int, lr: float, g: torch.Generator):
    """``steps`` Adam steps of ``objective`` on ``model`` (called as ``{"model": model}``), a batch
    ``next_batch(g)`` each, every draw from ``g``; returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = objective({"model": model}, next_batch(g), need=NEED, generator=g).losses["model"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
