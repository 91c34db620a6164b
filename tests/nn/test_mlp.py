import pytest
import torch
from torch import nn

from genkit.errors import GenkitError
from genkit.nn.mlp import MLP, VelocityMLP, timestep_embedding


def test_mlp_structure_and_shapes():
    net = MLP(3, 5, hidden=32, depth=3)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 32), (32, 32), (32, 32), (32, 5)]
    assert sum(isinstance(m, nn.SiLU) for m in net.modules()) == 3
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) for m in net.modules())
    assert net(torch.randn(7, 3)).shape == (7, 5)


def test_mlp_defaults_and_activation_choice():
    net = MLP(2, 1)
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [256, 256, 256, 1]
    assert any(isinstance(m, nn.LeakyReLU) for m in MLP(2, 1, activation="leaky_relu").modules())
    linear = MLP(4, 2, depth=0)
    assert len([m for m in linear.modules() if isinstance(m, nn.Linear)]) == 1
    with pytest.raises(GenkitError, match="silu"):
        MLP(2, 1, activation="swish")


def test_timestep_embedding():
    t = torch.tensor([0.0, 0.3, 1.0])
    e = timestep_embedding(t, 8)
    assert e.shape == (3, 8)
    torch.testing.assert_close(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos 0 = 1, sin 0 = 0
    torch.testing.assert_close(e[:, :4] ** 2 + e[:, 4:] ** 2, torch.ones(3, 4))
    # Distinct times get distinct embeddings (so the network can tell them apart).
    assert (timestep_embedding(torch.tensor([0.5]), 8) - timestep_embedding(torch.tensor([0.501]), 8)).abs().max() > 0.1
    with pytest.raises(GenkitError):
        timestep_embedding(t, 7)


def test_velocity_mlp_depends_on_x_and_t():
    torch.manual_seed(0)
    net = VelocityMLP(2)
    assert net.net.in_dim == 2 + 32
    x = torch.randn(5, 2)
    t = torch.full((5,), 0.3)
    out = net(x, t)
    assert out.shape == (5, 2)
    assert not torch.allclose(net(x, t + 0.2), out)
    assert not torch.allclose(net(x + 0.5, t), out)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_velocity_mlp_shape_errors():
    net = VelocityMLP(2, hidden=8, depth=1)
    with pytest.raises(GenkitError, match=r"\(B, 2\)"):
        net(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(GenkitError, match="t must"):
        net(torch.randn(4, 2), torch.zeros(4, 1))
