"""What only a CUDA device exercises: bf16 autocast, the fused optimizer, compile, data on the GPU.

Skipped without CUDA (tests/conftest.py). On the GPU machine: ``python -m pytest -q -m gpu``.
"""

import json

import pytest
import torch

from genkit.data.images import ImageStream
from genkit.data.toy import ToyStream
from genkit.nn.mlp import VelocityMLP
from genkit.nn.unet import build_unet
from genkit.objectives.flow_matching import FlowMatching
from genkit.paths import AffinePath, LinearSchedule
from genkit.sampling import ODESampler
from genkit.train import TrainConfig, Trainer
from genkit.train.optim import adam

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def small_unet():
    torch.manual_seed(0)
    return build_unet("mnist", block_out_channels=(32, 64, 64), layers_per_block=1).to(CUDA)


def test_adam_is_fused_on_cuda_only():
    assert adam(VelocityMLP(2, hidden=8, depth=1).to(CUDA).parameters(), lr=1e-3).defaults["fused"]
    assert not adam(VelocityMLP(2, hidden=8, depth=1).parameters(), lr=1e-3).defaults["fused"]


def test_bf16_trainer_learns_and_keeps_float32_weights(tmp_path):
    torch.manual_seed(0)
    model = VelocityMLP(2, hidden=128, depth=3).to(CUDA)
    cfg = TrainConfig(steps=300, batch_size=256, log_every=30, sample_every=0, checkpoint_every=300,
                      tensorboard=False, progress=False, precision="bf16")
    result = Trainer({"model": model}, {"model": adam(model.parameters(), lr=1e-3)},
                     FlowMatching(AffinePath(LinearSchedule())), ToyStream("8gaussians", 256, seed=0, device=CUDA),
                     cfg, run_dir=tmp_path, recipe="test", run_config={}).fit()
    assert result.step == 300 and all(p.dtype == torch.float32 for p in model.parameters())
    losses = [json.loads(line)["loss/model"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.8 * losses[0]


def test_compiled_unet_matches_eager():
    net = small_unet().eval()
    x, t = torch.randn(8, 1, 28, 28, device=CUDA), torch.rand(8, device=CUDA)
    with torch.no_grad():
        eager = net(x, t)
        compiled = torch.compile(net)(x, t)
    assert torch.linalg.vector_norm(compiled - eager) / torch.linalg.vector_norm(eager) < 1e-3


def test_sampling_state_stays_float32_under_bf16_autocast():
    net = small_unet().eval()
    sampler = ODESampler(net, (1, 28, 28), method="euler", steps=10, device=CUDA)
    x_0 = torch.randn(16, 1, 28, 28, device=CUDA)
    with torch.no_grad():
        ref = sampler.solve(x_0).x
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = sampler.solve(x_0).x
    assert low.dtype == torch.float32
    assert torch.linalg.vector_norm(low - ref) / torch.linalg.vector_norm(ref) < 2e-2


def test_image_stream_lives_on_the_gpu():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    batch = next(ImageStream(images, 16, seed=0, hflip=True, device=CUDA))
    assert batch.device.type == "cuda" and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1


def _no_sync_between(first: int, last: int):
    """A Trainer callback: CUDA synchronisations raise from step ``first`` until step ``last``."""

    def cb(trainer):
        if trainer.step == first:
            torch.cuda.set_sync_debug_mode("error")
        if trainer.step == last:
            torch.cuda.set_sync_debug_mode("default")

    return cb


@pytest.mark.parametrize("data", ["images", "pairs"])
def test_a_training_step_never_waits_for_the_gpu(tmp_path, data):
    """Between log and checkpoint steps nothing copies to the host or synchronises: the
    CPU queues the next step while the GPU runs this one (hflipped images and reflow pairs).
    Only a new epoch (images) or a new shard (pairs) copies its order from the host: the sizes
    here keep steps 3..19 inside the first epoch / shard."""
    from genkit.pairs import PairStream, generate_pairs

    net = small_unet()
    if data == "images":
        stream = ImageStream(torch.randint(0, 256, (1024, 1, 28, 28), dtype=torch.uint8), 32, seed=0, hflip=True,
                             device=CUDA)
    else:
        generate_pairs(lambda x, t: -x, tmp_path / "pairs", n=1024, shape=(1, 28, 28), seed=0, method="euler", steps=2,
                       batch_size=256, shard_size=1024, device=CUDA, progress=False)
        stream = PairStream(tmp_path / "pairs", 32, seed=0, device=CUDA)
    cfg = TrainConfig(steps=20, batch_size=32, log_every=1000, sample_every=0, checkpoint_every=0, grad_clip=1.0,
                      tensorboard=False, progress=False, warmup_steps=5)
    try:
        Trainer({"model": net}, {"model": adam(net.parameters(), lr=1e-4)}, FlowMatching(AffinePath(LinearSchedule())),
                stream, cfg, run_dir=None, recipe="test", run_config={}, callbacks=[_no_sync_between(3, 19)]).fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_compiling_is_not_training_time(tmp_path):
    import time

    net = small_unet()
    cfg = TrainConfig(steps=5, batch_size=32, log_every=5, sample_every=0, checkpoint_every=0, compile=True,
                      tensorboard=False, progress=False)
    stream = ImageStream(torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8), 32, seed=0, device=CUDA)
    t0 = time.perf_counter()
    result = Trainer({"model": net}, {"model": adam(net.parameters(), lr=1e-4)}, FlowMatching(AffinePath(LinearSchedule())),
                     stream, cfg, run_dir=None, recipe="test", run_config={}).fit()
    assert result.train_seconds < 0.2 * (time.perf_counter() - t0)  # compiling the UNet takes most of the wall time


def test_cuda_graphs_train_like_the_default_mode():
    """CUDA graphs (reduce-overhead) replay the default mode's kernels: the same updates, with gradient
    accumulation too (a graph's outputs are consumed before the next micro-step replays it). (The
    max-autotune modes autotune every convolution: minutes of compiling, not tested here.)"""
    from genkit.train.trainer import CompileMode

    def update(mode: CompileMode) -> torch.Tensor:
        """All parameters' change over 6 steps, flattened."""
        net = small_unet()
        start = torch.cat([p.detach().flatten() for p in net.parameters()])
        cfg = TrainConfig(steps=6, batch_size=32, accumulate=2, log_every=3, sample_every=0, checkpoint_every=0,
                          compile=True, compile_mode=mode, tensorboard=False, progress=False)
        stream = ImageStream(torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8), 16, seed=0, device=CUDA)
        Trainer({"model": net}, {"model": adam(net.parameters(), lr=1e-4)}, FlowMatching(AffinePath(LinearSchedule())),
                stream, cfg, run_dir=None, recipe="test", run_config={}).fit()
        return torch.cat([p.detach().flatten() for p in net.parameters()]) - start

    ref, got = update("default"), update("reduce-overhead")
    assert torch.isfinite(got).all() and torch.linalg.vector_norm(ref) > 0
    # same math up to bf16 rounding in other kernels (Adam's first steps move each weight by about
    # +-lr, so a few near-zero gradients may flip); stale graph outputs would give unrelated updates
    assert torch.linalg.vector_norm(got - ref) < 0.3 * torch.linalg.vector_norm(ref)


def test_compiled_sampling_and_nll_match_eager():
    """What --compile changes in the evaluation paths is rounding only: bf16 samples (as pairs and FID draw
    them) and one bits/dim batch (float32; the divergence's backward compiled by AOTAutograd) agree."""
    from genkit.eval.density import FlowDensity
    from genkit.eval.nll import image_nll
    from genkit.precision import autocast_field
    from genkit.sampling import compile_for_sampling

    net = small_unet().eval().requires_grad_(False)  # as load_network freezes a run's flow
    compiled = compile_for_sampling(net, CUDA)
    assert compiled is not net
    shape = (1, 28, 28)
    x_0 = torch.randn((64, *shape), generator=torch.Generator(device=CUDA).manual_seed(0), device=CUDA)

    def samples(field) -> torch.Tensor:
        sampler = ODESampler(autocast_field(field, CUDA, "bf16"), shape, method="euler", steps=8, device=CUDA)
        with torch.no_grad():
            return sampler.solve(x_0).x

    eager, fast = samples(net), samples(compiled)
    assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
    assert torch.linalg.vector_norm(fast - eager) / torch.linalg.vector_norm(eager) < 2e-2

    images = torch.randint(0, 256, (16, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(CUDA)

    def bits_per_dim(field) -> torch.Tensor:
        # a fixed grid (rk4, 4 steps): both networks are evaluated at the same times with the same probes
        density = FlowDensity(field, shape, divergence="hutchinson", method="rk4", steps=4)
        return image_nll(density, images, generator=torch.Generator(device=CUDA).manual_seed(0)).bits_per_dim

    eager_bpd, fast_bpd = bits_per_dim(net), bits_per_dim(compiled)
    assert torch.isfinite(fast_bpd).all()
    assert torch.linalg.vector_norm(fast_bpd - eager_bpd) / torch.linalg.vector_norm(eager_bpd) < 1e-2
