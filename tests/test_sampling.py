import pytest
import torch

from genkit.errors import GenkitError
from genkit.sampling import (
    GeneratorSampler,
    ODESampler,
    Sampler,
    compile_for_sampling,
    compiles_for_sampling,
)

MU, SIGMA, D = 1.7, 0.4, 2


def gaussian_rf_velocity(x, t):
    """Exact rectified-flow velocity N(0, I) -> N(MU, SIGMA^2 I) (SPEC 2e.1); flow map z -> MU + SIGMA z."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    s2 = (1 - t) ** 2 + t**2 * SIGMA**2
    return MU + (t * SIGMA**2 - (1 - t)) / s2 * (x - t * MU)


def test_is_a_sampler():
    assert isinstance(ODESampler(gaussian_rf_velocity, (D,)), Sampler)


@pytest.mark.parametrize(
    "method,steps,solver_tol,tol",
    [("euler", 100, 1e-5, 5e-2), ("rk4", 20, 1e-5, 1e-4), ("dopri5", 1, 1e-5, 5e-5), ("dopri5", 1, 1e-7, 5e-5)],
)
def test_reproduces_gaussian_flow_map(method, steps, solver_tol, tol):
    sampler = ODESampler(gaussian_rf_velocity, (D,), method=method, steps=steps, atol=solver_tol, rtol=solver_tol)
    n = 256
    samples = sampler.sample(n, generator=torch.Generator().manual_seed(0))
    z = torch.randn(n, D, generator=torch.Generator().manual_seed(0))  # the same noise the sampler drew
    assert samples.shape == (n, D) and samples.dtype == torch.float32
    assert not samples.requires_grad
    # Euler's global error is first order, about |z| / steps here (observed max 0.027 at 100 steps over
    # 256 samples); rk4 at 20 steps is ~1e-5; dopri5 (last step ending on t = 1) observed 1.3e-5 at
    # tolerance 1e-5 in 32 NFE (2.9e-4 in 50 NFE when it overshot t = 1) and 1.2e-5 at 1e-7, where
    # the float32 state's rounding dominates.
    assert (samples - (MU + SIGMA * z)).abs().max().item() < tol


def test_dopri5_sampler_evaluates_the_field_only_on_0_1():
    # The net never saw t > 1 (the UNet embeds 999 t; VP-derived fields are NaN there): a dopri5 step
    # that overshot t = 1 and interpolated back evaluated it at t up to 1.32.
    seen = []

    def field(x, t):
        seen.append(t[0].item())
        return gaussian_rf_velocity(x, t)

    sampler = ODESampler(field, (D,), method="dopri5")
    traj = sampler.solve(torch.randn(256, D, generator=torch.Generator().manual_seed(0)), keep=5)
    assert 0.0 <= min(seen) and max(seen) <= 1.0
    assert sampler.last_nfe == traj.nfe == len(seen)


@pytest.mark.parametrize("method,steps,nfe", [("euler", 7, 7), ("rk4", 5, 20)])
def test_every_sample_call_reports_its_nfe(method, steps, nfe):
    sampler = ODESampler(gaussian_rf_velocity, (D,), method=method, steps=steps)
    assert sampler.last_nfe == 0
    out = sampler.sample(4, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, torch.Tensor) and sampler.last_nfe == nfe
    adaptive = ODESampler(gaussian_rf_velocity, (D,), method="dopri5")
    adaptive.sample(4, generator=torch.Generator().manual_seed(0))
    first = adaptive.last_nfe
    assert first > 0
    adaptive.atol = adaptive.rtol = 1e-8
    adaptive.sample(4, generator=torch.Generator().manual_seed(0))
    assert adaptive.last_nfe > first  # the latest call's count, not a running total


def test_generator_sampler_reports_one_evaluation_per_sample():
    sampler = GeneratorSampler(torch.nn.Linear(3, 2), 3, batch_size=2)
    assert sampler.last_nfe == 0
    assert sampler.sample(5, generator=torch.Generator().manual_seed(0)).shape == (5, 2)
    assert sampler.last_nfe == 1


def test_same_seed_same_samples():
    sampler = ODESampler(gaussian_rf_velocity, (D,), steps=10)
    a = sampler.sample(16, generator=torch.Generator().manual_seed(3))
    b = sampler.sample(16, generator=torch.Generator().manual_seed(3))
    c = sampler.sample(16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_solve_keeps_evenly_spaced_states():
    sampler = ODESampler(gaussian_rf_velocity, (D,), method="rk4", steps=40)
    z = torch.randn(8, D, generator=torch.Generator().manual_seed(5))
    traj = sampler.solve(z, keep=5)
    assert traj.xs.shape == (5, 8, D)
    assert traj.nfe == 4 * 40  # steps on the full grid, reports only 5 states
    torch.testing.assert_close(traj.xs[0], z, rtol=0, atol=0)
    # The Gaussian flow's trajectories are Z_t = t MU + s_t Z_0 with s_t^2 = (1-t)^2 + t^2 SIGMA^2 (SPEC 2e.1).
    for i, t in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]):
        s_t = ((1 - t) ** 2 + t**2 * SIGMA**2) ** 0.5
        torch.testing.assert_close(traj.xs[i], t * MU + s_t * z, rtol=1e-4, atol=1e-4)


def test_solve_keep_with_dopri5_and_shape_errors():
    sampler = ODESampler(gaussian_rf_velocity, (D,), method="dopri5")
    z = torch.randn(4, D, generator=torch.Generator().manual_seed(6))
    assert sampler.solve(z, keep=3).xs.shape == (3, 4, D)
    with pytest.raises(GenkitError, match="keep"):
        sampler.solve(z, keep=1)
    with pytest.raises(GenkitError, match="shape"):
        sampler.solve(torch.zeros(4, 3))
    with pytest.raises(GenkitError, match="euler"):
        ODESampler(gaussian_rf_velocity, (D,), method="heun")


def test_image_shaped_samples():
    rate = torch.tensor(1.0, requires_grad=True)  # a parameter: sample() must not build a graph through it
    sampler = ODESampler(lambda x, t: -rate * x, (1, 4, 4), steps=5)
    out = sampler.sample(3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 4, 4) and not out.requires_grad
    assert sampler.solve(torch.zeros(1, 1, 4, 4)).x.requires_grad  # solve() is differentiable
    z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, z * 0.8**5)  # five Euler steps of dx/dt = -x with dt = 0.2


def test_compile_for_sampling_never_compiles_on_the_cpu(compile_forbidden):
    net = torch.nn.Linear(2, 2)
    assert compile_for_sampling(net, "cpu") is net and compile_for_sampling(net, torch.device("cpu")) is net
    assert compile_for_sampling(net, "cuda", enabled=False) is net  # --no-compile
    assert not compiles_for_sampling("cpu") and not compiles_for_sampling("cuda:1", enabled=False)


def test_compile_for_sampling_compiles_once_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda net, *args, **kwargs: calls.append((net, args, kwargs)) or "compiled")
    net = torch.nn.Linear(2, 2)
    assert compiles_for_sampling(torch.device("cuda", 0))
    assert compile_for_sampling(net, torch.device("cuda", 0)) == "compiled"  # no CUDA needed to ask
    assert calls == [(net, (), {})]  # once, the network itself, default mode
