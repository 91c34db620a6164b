"""Feature extractors for Fréchet distances: uint8 images in, ``(B, dim)`` float features out.

* :class:`InceptionFeatures` — the standard FID network: Inception-v3 pool3 (2048-d) of
  TTUR, as packaged by torch-fidelity (TF-compatible bilinear resize to 299).
* :class:`ClassifierFeatures` — the penultimate layer of a classifier trained with
  ``python -m genkit.recipes.classifier`` (FID-C, a cheap in-domain metric for MNIST-like sets).

Weights are never downloaded here: machines running genkit may be offline, so a missing
file is a one-line error saying where to put it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from genkit.errors import GenkitError

__all__ = ["ClassifierFeatures", "FeatureExtractor", "InceptionFeatures", "inception_weights_path", "weights_digest"]


@runtime_checkable
class FeatureExtractor(Protocol):
    """``extractor(images: (B, C, H, W) uint8) -> (B, dim)`` float32 features; ``name`` says which network."""

    name: str
    dim: int

    def __call__(self, images: Tensor) -> Tensor: ...


def weights_digest(net: torch.nn.Module, length: int = 10) -> str:
    """The first ``length`` hex digits of a SHA-256 over ``net``'s state: names, dtypes, shapes, values."""
    import hashlib

    h = hashlib.sha256()
    for key, t in sorted(net.state_dict().items()):
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]


def _check_uint8(images: Tensor, who: str) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise GenkitError(f"{who} expects uint8 images (B, C, H, W), got {got}; convert with genkit.data.images.to_uint8")


def _inception_source() -> tuple[str, str]:
    """(URL, file name) of the weights torch-fidelity's FeatureExtractorInceptionV3 would download."""
    from urllib.parse import urlparse

    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    except ImportError:
        raise GenkitError("InceptionFeatures needs torch-fidelity: pip install torch-fidelity") from None
    return URL_INCEPTION_V3, Path(urlparse(URL_INCEPTION_V3).path).name


def inception_weights_path(weights: str | Path | None = None) -> Path:
    """The Inception weights file: ``weights`` if given, else torch-fidelity's file in the torch hub cache.

    The cache file is ``torch.hub.get_dir()/checkpoints/<name>`` (``$TORCH_HOME/hub/...``),
    where ``torch.hub.load_state_dict_from_url`` keeps it. Raises a one-line
    :class:`GenkitError` naming the file, the folder and the download URL if it is missing.
    """
    url, name = _inception_source()
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise GenkitError(f"Inception weights {path} not found: download {url} there, or pass weights=None to use {name} from the torch hub cache")
        return path
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / name
    if not path.is_file():
        raise GenkitError(
            f"Inception weights {name} not found in {folder} (no download attempted): put the file there "
            f"(download it from {url}), set TORCH_HOME, or pass weights=PATH"
        )
    return path


def _inception_name(path: Path) -> str:
    """``"inception-v3"`` if ``path`` holds torch-fidelity's published weights (its SHA-256 starts with the
    hash in the published file name, as torch.hub checks), else ``"inception-v3@<first 10 hex digits>"``."""
    import hashlib
    import re

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    published = re.search(r"-([a-f0-9]{8,})\.", _inception_source()[1])
    if published is not None and digest.startswith(published.group(1)):
        return InceptionFeatures.name
    return f"{InceptionFeatures.name}@{digest[:10]}"


class InceptionFeatures:
    """Inception-v3 pool3 features (2048-d) for the standard FID, via torch-fidelity.

    Takes uint8 ``(B, C, H, W)`` images of any size, C = 3 or 1 (grayscale is repeated to
    RGB); returns ``(B, 2048)`` float32 on ``device``. torch-fidelity resizes to 299x299
    with TF1-compatible bilinear interpolation, so the features (and FIDs) match TTUR's
    TensorFlow reference statistics. pytorch-fid's own ``.npz`` files load here (same keys)
    but were made with a different (PyTorch) resize: FIDs against them are only approximately
    comparable.

    ``name`` is ``"inception-v3"`` for torch-fidelity's published weights (the hub cache file, or
    a ``weights`` file whose SHA-256 starts with the published file's hash); other weights are
    ``"inception-v3@<digest>"`` (the first 10 hex digits of the file's SHA-256), so results say
    which network measured them and cached reference statistics of other weights are never reused.

    Args:
        weights: the ``.pth`` state dict; ``None``: torch-fidelity's file in the torch hub
            cache (see :func:`inception_weights_path`).
        device: where the network runs.
    """

    name = "inception-v3"
    dim = 2048

    def __init__(self, weights: str | Path | None = None, *, device: str | torch.device = "cpu") -> None:
        path = inception_weights_path(weights)
        if weights is not None:
            self.name = _inception_name(path)
        try:  # a tensors-only check first: torch-fidelity itself loads with weights_only=False
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GenkitError(f"cannot load Inception weights {path} as a plain state dict ({first}); re-download it") from None
        if not isinstance(state, dict) or "fc.weight" not in state:
            raise GenkitError(f"{path} is not torch-fidelity's Inception-v3 state dict (no 'fc.weight')")
        del state
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.device = torch.device(device)
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
        ).to(self.device)

    def __call__(self, images: Tensor) -> Tensor:
        """``images: (B, C, H, W)`` uint8, C in {1, 3} -> ``(B, 2048)`` float32."""
        _check_uint8(images, "InceptionFeatures")
        if images.shape[1] not in (1, 3):
            raise GenkitError(f"InceptionFeatures takes 1 or 3 channels, got {images.shape[1]}")
        x = images.to(self.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        with torch.no_grad():
            (features,) = self.net(x.contiguous())
        return features.float()


class ClassifierFeatures:
    """Penultimate-layer features of a classifier run (``python -m genkit.recipes.classifier``).

    ``checkpoint`` is the run folder (its latest checkpoint is used) or one
    ``checkpoints/step_*`` folder; weights are loaded from safetensors through
    :mod:`genkit.train.checkpoint`, never unpickled. ``name`` is ``"classifier:<dataset>@<digest>"``
    (:func:`weights_digest` of the weights used), so FID-C results say which classifier measured them,
    and cached reference statistics of another classifier (retrained, another run) are never reused.

    Args:
        checkpoint: run folder or checkpoint folder.
        device: where the network runs.
        ema: use the EMA weights (as the run's own test accuracy does).
    """

    def __init__(self, checkpoint: str | Path, *, device: str | torch.device = "cpu", ema: bool = True) -> None:
        from genkit.recipes.classifier import load_classifier

        loaded = load_classifier(checkpoint, device=device, ema=ema)
        self.net = loaded.net
        self.shape = loaded.shape
        self.device = torch.device(device)
        self.name = f"classifier:{loaded.dataset}@{weights_digest(loaded.net)}"
        self.dim = loaded.net.feature_dim
        self.step = loaded.step

    def __call__(self, images: Tensor) -> Tensor:
        """``images: (B, *shape)`` uint8 (the classifier's own image shape) -> ``(B, dim)`` float32."""
        from genkit.data.images import to_float

        _check_uint8(images, self.name)
        if tuple(images.shape[1:]) != self.shape:
            c, h, w = self.shape
            raise GenkitError(f"{self.name} was trained on {c}x{h}x{w} images, got {'x'.join(map(str, images.shape[1:]))}")
        with torch.no_grad():
            return self.net.features(to_float(images.to(self.device))).float()
