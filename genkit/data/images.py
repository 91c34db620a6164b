"""Image datasets as one uint8 tensor, the uint8 <-> [-1, 1] conversions, and a batch stream.

torchvision is imported inside :func:`load_images` only, so importing this module is light.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from genkit.data.toy import _check_count
from genkit.errors import GenkitError
from genkit.seeding import derive_seed

ImageName = Literal["mnist", "fashion-mnist", "cifar10", "imagefolder"]

_KNOWN = ("mnist", "fashion-mnist", "cifar10", "imagefolder")


def _expected_files(cls: type, root: Path) -> list[Path]:
    """The files torchvision checks before loading ``cls`` from ``root`` (both splits)."""
    if hasattr(cls, "resources"):  # MNIST and FashionMNIST: root/<Class>/raw/<file without .gz>
        raw = root / cls.__name__ / "raw"
        return [raw / Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
    folder = root / cls.base_folder  # CIFAR10: root/cifar-10-batches-py/<batch files>
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [folder / name for name in names]


def _torchvision_class(name: str) -> type:
    from torchvision import datasets

    return {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]


def _split_folder(root: Path, split: str) -> Path:
    """The ImageFolder directory of ``split``: ``root/<split>`` if it exists, else ``root``."""
    return root / split if (root / split).is_dir() else root


def _load_torchvision(name: str, root: Path, split: str, download: bool) -> Tensor:
    cls = _torchvision_class(name)
    train = split == "train"
    dataset = None
    try:
        dataset = cls(root=str(root), train=train, download=False)
    except RuntimeError:  # torchvision's "Dataset not found (or corrupted)"
        if download:
            try:
                dataset = cls(root=str(root), train=train, download=True)
            except Exception:  # no network, mirror down, bad checksum: report the files below
                dataset = None
    except Exception as e:  # noqa: BLE001 -- files present but unreadable: torchvision raises ValueError, EOFError...
        folder = _expected_files(cls, root)[0].parent
        raise GenkitError(f"{name}: files in {folder} are damaged or incomplete ({type(e).__name__}): "
                          "copy them again") from None
    if dataset is None:
        expected = _expected_files(cls, root)
        missing = [p for p in expected if not p.is_file()]
        problem = f"missing {', '.join(map(str, missing))}" if missing else (
            f"files in {expected[0].parent} fail torchvision's checksum"
        )
        todo = "the download failed, so put the files there by hand" if download else (
            "put the files there, or let them be downloaded (download=True; on the command line --data.download)"
        )
        raise GenkitError(f"{name} data not found: {problem}; {todo}")
    data = dataset.data
    if name == "cifar10":  # numpy (N, H, W, C)
        return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    return data.unsqueeze(1).contiguous()  # MNIST-like: uint8 tensor (N, H, W)


def _read_all(dataset) -> list[Tensor]:
    """Every image of ``dataset`` in order, decoded by a few threads (Pillow releases the GIL while it
    decodes): 60,000 CIFAR-10 JPEGs take a minute on one core."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    n = len(dataset)
    chunks = [range(i, min(i + 1000, n)) for i in range(0, n, 1000)]
    with ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1))) as pool:
        parts = pool.map(lambda chunk: [dataset[i][0] for i in chunk], chunks)
        return [image for part in parts for image in part]


def _load_imagefolder(root: Path, split: str) -> Tensor:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    folder = _split_folder(root, split)
    if not folder.is_dir():
        raise GenkitError(f"image folder {folder} does not exist; pass an existing directory as root")
    try:
        dataset = ImageFolder(str(folder), transform=pil_to_tensor)
    except FileNotFoundError as err:
        raise GenkitError(
            f"no images found in {folder} ({err}); use one subfolder per class holding image files"
        ) from None
    images = _read_all(dataset)
    sizes: dict[tuple[int, ...], list[str]] = {}
    for image, (path, _) in zip(images, dataset.samples):
        sizes.setdefault(tuple(image.shape), []).append(path)
    if len(sizes) > 1:
        found = "; ".join(
            f"{c}x{h}x{w} ({len(paths)} images, e.g. {paths[0]})" for (c, h, w), paths in sizes.items()
        )
        raise GenkitError(f"images in {folder} differ in size: {found}; resize them to one size")
    return torch.stack(images)


def load_images(
    name: str,
    *,
    root: str | Path,
    split: Literal["train", "test"] = "train",
    download: bool = True,
) -> Tensor:
    """All images of one split as a uint8 tensor ``(N, C, H, W)`` on the CPU.

    ``mnist`` / ``fashion-mnist`` (C=1, 28x28) and ``cifar10`` (C=3, 32x32) go through
    ``torchvision.datasets`` with ``root=root``; with ``download=True`` a missing set is
    downloaded if the network allows. ``imagefolder``: ``root`` is a
    ``torchvision.datasets.ImageFolder`` directory (one subfolder per class); ``root/<split>``
    is used if it exists, else ``root``; images are read as RGB (C=3) and must share one size.
    Raises :class:`GenkitError` for an unknown name or split, missing files (naming them),
    a missing folder or mixed image sizes.
    """
    if name not in _KNOWN:
        raise GenkitError(f"unknown image dataset {name!r}; use one of: {', '.join(_KNOWN)}")
    if split not in ("train", "test"):
        raise GenkitError(f"unknown split {split!r}; use 'train' or 'test'")
    root = Path(root).expanduser()
    if name == "imagefolder":
        return _load_imagefolder(root, split)
    return _load_torchvision(name, root, split, download)


def load_labels(
    name: str,
    *,
    root: str | Path,
    split: Literal["train", "test"] = "train",
    classes: Sequence[str] | None = None,
) -> tuple[Tensor, list[str]]:
    """Labels ``(N,)`` int64 of the images :func:`load_images` returns (same order), and the class names.

    ``classes``: number the labels by these names (those of the training split, for a test split
    whose folder holds only some classes), returned as the class names; a class of the split that
    ``classes`` lacks is a :class:`GenkitError`. Default: the split's own classes.
    Call it after ``load_images`` succeeded: the files are then known to be there.
    """
    root = Path(root).expanduser()
    if name == "imagefolder":
        from torchvision.datasets import ImageFolder

        folder = _split_folder(root, split)
        dataset = ImageFolder(str(folder))
    else:
        folder = root
        dataset = _torchvision_class(name)(root=str(root), train=split == "train", download=False)
    labels, found = torch.as_tensor(dataset.targets, dtype=torch.long), list(dataset.classes)
    if classes is None or list(classes) == found:
        return labels, found
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise GenkitError(f"the {split} images in {folder} have classes {unknown} that {list(classes)} lacks: "
                          "remove those folders or add the classes to the training images")
    renumber = torch.tensor([index[c] for c in found], dtype=torch.long)
    return renumber[labels], list(classes)


def to_float(x: Tensor) -> Tensor:
    """uint8 images ``x: (B, C, H, W)`` in [0, 255] -> float32 in [-1, 1] (same shape, device).

    The one conversion into the library's image convention; :func:`to_uint8` inverts it
    exactly on all 256 values.
    """
    if x.dtype != torch.uint8:
        raise GenkitError(f"to_float expects uint8 images, got {x.dtype}; use to_uint8 for floats")
    return x.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """Float images ``x: (B, C, H, W)`` in [-1, 1] -> uint8 in [0, 255] (same shape, device).

    Rounds to the nearest level and clamps values outside [-1, 1]; the one conversion out
    of the library's image convention (saving grids, FID).
    """
    if not x.is_floating_point():
        raise GenkitError(f"to_uint8 expects float images in [-1, 1], got {x.dtype}")
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


class ImageStream:
    """Infinite, seeded, resumable stream of float32 batches ``(batch_size, C, H, W)`` in [-1, 1].

    ``images: (N, C, H, W)`` uint8 are moved to ``device`` once; indexing, conversion and
    flips happen there. Each epoch's order is the rank's shard of a permutation from
    ``DistributedSampler(num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
    drop_last=True)`` after ``set_epoch(epoch)``. An epoch yields ``len(shard) // batch_size``
    batches (the remainder is skipped; batches never cross epochs). With ``hflip=True``
    each image is flipped horizontally with probability 1/2; an epoch's flips are drawn at
    once, ``(batches, batch_size)``, from a CPU generator seeded with
    ``derive_seed(seed, "hflip", rank, epoch)``, so batches do not depend on the device and
    resuming needs only ``state_dict() == {"epoch": e, "index": i}`` (``i`` = batches already
    taken in epoch ``e``). Order and flips move to the device once per epoch: a step makes
    no host-to-device copy, hence no synchronisation of a CUDA device.
    """

    def __init__(
        self,
        images: Tensor,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        hflip: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images)
            raise GenkitError(f"ImageStream expects uint8 images (N, C, H, W), got {got}; see load_images")
        _check_count("batch_size", batch_size, 1)
        _check_count("world_size", world_size, 1)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise GenkitError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.hflip = hflip
        self._sampler = DistributedSampler(
            range(len(images)), num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed,
            drop_last=True,
        )
        self.batches_per_epoch = len(self._sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise GenkitError(
                f"{len(images)} images over {world_size} rank(s) give {len(self._sampler)} per rank, "
                f"fewer than batch_size={batch_size}; lower the batch size or use more images"
            )
        self.epoch = 0
        self.index = 0
        self._order_epoch = -1
        self._order = torch.empty(0, dtype=torch.long)
        self._flips = torch.empty(0, dtype=torch.bool)

    def epoch_indices(self, epoch: int) -> Tensor:
        """This rank's image indices for ``epoch``: ``(len(shard),)`` int64 on the CPU."""
        self._sampler.set_epoch(epoch)
        return torch.tensor(list(self._sampler), dtype=torch.long)

    def __iter__(self) -> "ImageStream":
        return self

    def __next__(self) -> Tensor:
        """The next batch: ``(batch_size, C, H, W)`` float32 in [-1, 1] on ``device``."""
        if self._order_epoch != self.epoch:
            self._order = self.epoch_indices(self.epoch).to(self.device)
            if self.hflip:
                seed = derive_seed(self.seed, "hflip", self.rank, self.epoch)
                flips = torch.rand(self.batches_per_epoch, self.batch_size, generator=torch.Generator().manual_seed(seed))
                self._flips = (flips < 0.5).to(self.device)
            self._order_epoch = self.epoch
        start = self.index * self.batch_size
        batch = self.images[self._order[start : start + self.batch_size]]
        if self.hflip:
            flip = self._flips[self.index].view(-1, 1, 1, 1)  # (batch_size, 1, 1, 1)
            batch = torch.where(flip, batch.flip(-1), batch)
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return to_float(batch)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "index": i}``: the next batch is batch ``i`` of epoch ``e``."""
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume from a :meth:`state_dict` (of a stream with the same images and settings)."""
        if "epoch" not in state or "index" not in state:
            raise GenkitError(f"ImageStream state needs keys 'epoch' and 'index', got {sorted(state)}")
        epoch, index = (int(v) if isinstance(v, Tensor) else v for v in (state["epoch"], state["index"]))
        _check_count("ImageStream state 'epoch'", epoch, 0)
        _check_count("ImageStream state 'index'", index, 0)
        if index > self.batches_per_epoch:
            raise GenkitError(
                f"ImageStream state index {index} exceeds {self.batches_per_epoch} batches per epoch; "
                "resume with the same images, batch_size and world_size"
            )
        self.epoch, self.index = epoch, index
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
