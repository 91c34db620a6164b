"""Acceptance: Gaussian -> Gaussian, a *trained* 2-RF is straight and one Euler step is exact (SPEC 2(e)3).

tests/test_analytic.py checks the closed-form 2-RF field; this trains one. In 2-D, source
``N(0, I)``, target ``N(MU, diag(SIGMA^2))``: per coordinate the independent-coupling flow map
is ``z -> MU + SIGMA z`` (SPEC 2(e)1) and the 2-RF on its pairs is straight (SPEC 2(e)3).

One seeded pipeline (module fixture, CPU, one thread), ``VelocityMLP(2, hidden=64, depth=3)``
and Adam throughout:

1. 1-RF: :class:`FlowMatching` (independent coupling, linear path), STEPS_1RF steps of BATCH
   fresh target samples;
2. pairs: :func:`genkit.pairs.generate_pairs` writes N_PAIRS pairs ``(Z_0, Z_1 = ODESolve(1-RF, Z_0))``
   (rk4, 16 steps) to a temporary folder and :class:`PairStream` streams them back;
3. 2-RF: warm-started from 1-RF, STEPS_2RF steps of flow matching on those pairs.

Everything is evaluated on N_EVAL fresh noise points. ``S`` is :func:`straightness` (per dimension,
100 Euler steps); "relative one-step error" is ``E||x_0 + v(x_0, 0) - (MU + SIGMA x_0)||^2 / sum(SIGMA^2)``
(squared error over the target's total variance; collapsing onto ``MU`` scores exactly 1).
The measured numbers for seeds 0 and 1 are in the docstrings of the tests; the test runs seed 0.
"""

import copy

import pytest
import torch
from toy_training import train_steps

from genkit.analytic import gaussian_rf_map, gaussian_rf_velocity
from genkit.eval.straightness import straightness
from genkit.nn.mlp import VelocityMLP
from genkit.objectives.flow_matching import FlowMatching
from genkit.pairs import PairStream, generate_pairs
from genkit.paths import AffinePath, LinearSchedule

MU = torch.tensor([2.0, -1.0])
SIGMA = torch.tensor([0.5, 1.5])
BATCH = 256
STEPS_1RF = 1000
STEPS_2RF = 600
N_PAIRS = 4096
N_EVAL = 2000
HIDDEN = 64


def _one_step_rel_error(field, x_0):
    """``E||x_0 + v(x_0, 0) - (MU + SIGMA x_0)||^2 / sum(SIGMA^2)``."""
    with torch.no_grad():
        x_1 = x_0 + field(x_0, torch.zeros(x_0.shape[0]))
    return (x_1 - gaussian_rf_map(x_0, MU, SIGMA)).pow(2).sum(1).mean().item() / SIGMA.pow(2).sum().item()


def run_pipeline(seed: int, pairs_dir) -> dict:
    """Train 1-RF and 2-RF on the Gaussian pair; return the measured numbers."""
    torch.manual_seed(seed)  # network init; the library never seeds
    g = torch.Generator().manual_seed(seed + 1000)
    fm = FlowMatching(AffinePath(LinearSchedule()))
    target = lambda g: MU + SIGMA * torch.randn(BATCH, 2, generator=g)
    rf1 = train_steps(VelocityMLP(2, hidden=HIDDEN, depth=3), fm, target, STEPS_1RF, 1e-3, g)

    generate_pairs(
        rf1, pairs_dir, n=N_PAIRS, shape=(2,), seed=seed, method="rk4", steps=16,
        batch_size=N_PAIRS, shard_size=N_PAIRS, progress=False,
    )
    stream = PairStream(pairs_dir, BATCH, seed=seed)
    rf2 = train_steps(copy.deepcopy(rf1), fm, lambda g: next(stream), STEPS_2RF, 1e-3, g)

    x_0 = torch.randn(N_EVAL, 2, generator=torch.Generator().manual_seed(seed + 2000))
    exact_1rf = lambda x, t: gaussian_rf_velocity(x, t, MU, SIGMA)
    return {
        "S_1rf": straightness(rf1, x_0, steps=100).value,
        "S_2rf": straightness(rf2, x_0, steps=100).value,
        "S_1rf_exact": straightness(exact_1rf, x_0.double(), steps=100).value,
        "one_step_1rf": _one_step_rel_error(rf1, x_0),
        "one_step_2rf": _one_step_rel_error(rf2, x_0),
    }


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest and immune to oversubscription
    try:
        yield run_pipeline(seed=0, pairs_dir=tmp_path_factory.mktemp("gaussian_pairs"))
    finally:
        torch.set_num_threads(before)


def test_trained_1rf_is_the_curved_gaussian_flow(measured):
    """The learned 1-RF has the straightness of the exact one, so comparing 2-RF with it means something.

    The exact 1-RF trajectories ``Z_t = t MU + s_t Z_0`` (SPEC 2(e)1) give, by quadrature, a
    per-dimension ``S = 0.429`` (0.215 for sigma 0.5, 0.644 for sigma 1.5); straightness() of the
    exact field on the same N_EVAL points gives 0.437 (seed 0) and 0.418 (seed 1). Learned 1-RF,
    seeds 0 / 1: 0.401 / 0.387, ratios 0.92 / 0.93 (seeds 0-5: 0.89-0.97). The band 0.7-1.3 is
    3x wider than the spread and excludes a flow that is already straight (ratio ~0).
    """
    ratio = measured["S_1rf"] / measured["S_1rf_exact"]
    assert 0.7 < ratio < 1.3, measured


def test_trained_2rf_is_straight(measured):
    """SPEC 2(e)3: the 2-RF on Gaussian pairs has ``S = 0``; a trained one must come close.

    Measured per-dimension S, seed 0 / seed 1: 1-RF 0.401 / 0.387, 2-RF 3.2e-4 / 2.9e-4
    (ratio 1250 / 1350; seeds 0-5: 2-RF 2.9e-4 to 3.7e-4, ratios >= 1090). Bounds: S(2-RF) below
    S(1-RF) / 50 (20x margin on the ratio) and below 2e-3 (5x margin over the worst seed, 0.5 % of
    the exact 1-RF's 0.429). 2-RF trained on pairs whose coupling was lost (the pairs reshuffled,
    i.e. an independent coupling again) is as curved as 1-RF and fails both.
    """
    assert measured["S_2rf"] < measured["S_1rf"] / 50, measured
    assert measured["S_2rf"] < 2e-3, measured


def test_one_euler_step_of_trained_2rf_is_the_gaussian_map(measured):
    """SPEC 2(e)3: one Euler step ``x_0 + v(x_0, 0)`` of 2-RF lands on ``MU + SIGMA x_0``; 1-RF's does not.

    Relative one-step error (squared error over the target variance sum(SIGMA^2) = 2.5), seed 0 /
    seed 1: 2-RF 8.2e-3 / 7.6e-3, 1-RF 0.80 / 0.61 (the exact 1-RF collapses onto MU: error 1,
    SPEC 2(e)2). Seeds 0-5: 2-RF 1.1e-3 to 8.2e-3, 1-RF 0.61-0.80, ratio >= 80. What is left of the
    2-RF error is the 1-RF teacher's own: its rk4 map (the pairs) is off by 8.7e-3 / 9.2e-3.
    Bounds: 2-RF below 0.04 (5x margin over the worst seed), 1-RF above 0.4 and above 20x the 2-RF.
    """
    assert measured["one_step_2rf"] < 0.04, measured
    assert measured["one_step_1rf"] > 0.4, measured
    assert measured["one_step_1rf"] > 20 * measured["one_step_2rf"], measured
