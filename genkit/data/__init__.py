"""Datasets as tensors and seeded, resumable batch streams.

``toy``: 2-D toy distributions (:func:`sample_toy`, :class:`ToyStream`).
``images``: MNIST, Fashion-MNIST, CIFAR-10 and ImageFolder as uint8 ``(N, C, H, W)``
(:func:`load_images`), the shared conversions :func:`to_float` / :func:`to_uint8`, and
:class:`ImageStream`. Importing this package does not import torchvision.
"""

from genkit.data.images import ImageName, ImageStream, load_images, load_labels, to_float, to_uint8
from genkit.data.toy import TOY_DATASETS, ToyName, ToyStream, sample_toy

__all__ = [
    "TOY_DATASETS",
    "ImageName",
    "ImageStream",
    "ToyName",
    "ToyStream",
    "load_images",
    "load_labels",
    "sample_toy",
    "to_float",
    "to_uint8",
]
