"""Image loading (fake MNIST IDX files, tiny ImageFolder), conversions and ImageStream."""

import struct

import pytest
import torch

from genkit.data import ImageStream, load_images, load_labels, to_float, to_uint8
from genkit.errors import GenkitError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _write_idx(raw, split, images):
    """IDX files as torchvision reads them: big-endian int32 header, magic 2051 / 2049."""
    n, h, w = images.shape
    image_file, label_file = MNIST_FILES[split]
    (raw / image_file).write_bytes(struct.pack(">4i", 2051, n, h, w) + images.numpy().tobytes())
    (raw / label_file).write_bytes(struct.pack(">2i", 2049, n) + bytes(i % 10 for i in range(n)))


def _fake_mnist(root, folder="MNIST", n=20):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    written = {}
    for split, count in (("train", n), ("test", n // 2)):
        written[split] = torch.randint(0, 256, (count, 28, 28), generator=g, dtype=torch.uint8)
        _write_idx(raw, split, written[split])
    return written


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_load_fake_mnist(tmp_path, name, folder):
    written = _fake_mnist(tmp_path, folder)
    for split in ("train", "test"):
        x = load_images(name, root=tmp_path, split=split, download=False)
        assert x.dtype == torch.uint8 and x.device.type == "cpu"
        assert x.shape == (len(written[split]), 1, 28, 28)
        assert torch.equal(x[:, 0], written[split])


def test_missing_mnist_offline_names_the_files(tmp_path):
    with pytest.raises(GenkitError) as info:
        load_images("mnist", root=tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "t10k-labels-idx1-ubyte" in message and "download=True" in message and "--data.download" in message


@pytest.mark.parametrize("download", [False, True])
def test_damaged_mnist_files_are_a_one_line_error(tmp_path, download, monkeypatch):
    from torchvision import datasets

    monkeypatch.setattr(datasets.MNIST, "download", lambda self: pytest.fail("tried to download"))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "test"):
        for name in MNIST_FILES[split]:
            (raw / name).write_bytes(b"")  # present, empty
    with pytest.raises(GenkitError) as info:
        load_images("mnist", root=tmp_path, download=download)
    message = str(info.value)
    assert "\n" not in message and f"files in {raw} are damaged or incomplete" in message and "copy them again" in message


def test_failed_download_falls_through_to_the_error(tmp_path, monkeypatch):
    from urllib.error import URLError

    from torchvision import datasets

    def no_network(self):
        raise URLError("no network")

    monkeypatch.setattr(datasets.MNIST, "download", no_network)
    with pytest.raises(GenkitError, match="download failed.*") as info:
        load_images("mnist", root=tmp_path, download=True)
    assert "\n" not in str(info.value) and "train-images-idx3-ubyte" in str(info.value)


def test_missing_cifar_offline_names_the_files(tmp_path):
    with pytest.raises(GenkitError, match="cifar-10-batches-py.*data_batch_1") as info:
        load_images("cifar10", root=tmp_path, download=False)
    assert "\n" not in str(info.value)


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(GenkitError, match="mnist, fashion-mnist, cifar10, imagefolder"):
        load_images("svhn", root=tmp_path)
    with pytest.raises(GenkitError, match="split"):
        load_images("mnist", root=tmp_path, split="val")


def _write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.permute(1, 2, 0).numpy()).save(path)


def test_imagefolder_loads_with_and_without_split(tmp_path):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 3, 6, 8), generator=g, dtype=torch.uint8)
    # ImageFolder orders by class folder, then file name.
    files = [("cat", "a.png"), ("cat", "b.png"), ("dog", "a.png"), ("dog", "c.png")]
    for i, (cls, name) in enumerate(files):
        _write_png(tmp_path / "flat" / cls / name, pixels[i])
        _write_png(tmp_path / "split" / "test" / cls / name, pixels[3 - i])
    x = load_images("imagefolder", root=tmp_path / "flat")
    assert x.dtype == torch.uint8 and torch.equal(x, pixels)  # PNG is lossless
    assert torch.equal(load_images("imagefolder", root=tmp_path / "split", split="test"), pixels.flip(0))


def test_imagefolder_labels_follow_the_given_classes(tmp_path):
    """A test split holding only some of the training classes is labelled by the training classes' names."""
    for split, classes in (("train", ("cat", "dog", "fox")), ("test", ("dog", "fox"))):
        for c in classes:
            _write_png(tmp_path / split / c / "a.png", torch.zeros(3, 4, 4, dtype=torch.uint8))
    train_labels, train_classes = load_labels("imagefolder", root=tmp_path, split="train")
    assert train_classes == ["cat", "dog", "fox"] and train_labels.tolist() == [0, 1, 2]
    assert load_labels("imagefolder", root=tmp_path, split="test")[0].tolist() == [0, 1]  # its own numbering
    labels, classes = load_labels("imagefolder", root=tmp_path, split="test", classes=train_classes)
    assert labels.tolist() == [1, 2] and labels.dtype == torch.long and classes == train_classes
    with pytest.raises(GenkitError, match=r"classes \['dog'\] that \['cat', 'fox'\] lacks") as info:
        load_labels("imagefolder", root=tmp_path, split="test", classes=["cat", "fox"])
    assert "\n" not in str(info.value)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(GenkitError, match="does not exist"):
        load_images("imagefolder", root=tmp_path / "nowhere")
    _write_png(tmp_path / "mixed" / "a" / "1.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    _write_png(tmp_path / "mixed" / "a" / "2.png", torch.zeros(3, 4, 6, dtype=torch.uint8))
    with pytest.raises(GenkitError, match="3x8x8.*3x4x6") as info:
        load_images("imagefolder", root=tmp_path / "mixed")
    assert "\n" not in str(info.value)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(GenkitError, match="no images"):
        load_images("imagefolder", root=tmp_path / "empty")


def test_to_float_to_uint8_round_trip_all_values():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = to_float(x)
    assert y.dtype == torch.float32 and y.min() == -1 and y.max() == 1
    assert torch.equal(to_uint8(y), x)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 5.0])), torch.tensor([0, 255], dtype=torch.uint8))
    with pytest.raises(GenkitError):
        to_float(y)
    with pytest.raises(GenkitError):
        to_uint8(x)


def _images(n=100, h=4, w=5):
    # Image i holds the value i in its first pixel, so a batch tells which images it holds.
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, h, w), generator=g, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x


def _ids(batch):
    return to_uint8(batch)[:, 0, 0, 0].long()


def test_stream_shape_range_and_epochs():
    stream = ImageStream(_images(), 16, seed=0)
    assert stream.batches_per_epoch == 6  # 100 // 16; the last 4 images of each order are skipped
    epochs = []
    for _ in range(2):
        batches = [next(stream) for _ in range(6)]
        assert all(b.shape == (16, 1, 4, 5) and b.dtype == torch.float32 for b in batches)
        assert all(b.min() >= -1 and b.max() <= 1 for b in batches)
        ids = torch.cat([_ids(b) for b in batches])
        assert len(set(ids.tolist())) == 96  # every index at most once per epoch
        epochs.append(ids)
    assert not torch.equal(epochs[0], epochs[1])  # a new permutation each epoch
    assert stream.state_dict() == {"epoch": 2, "index": 0}


def test_stream_ranks_get_disjoint_shards():
    shards = [ImageStream(_images(), 10, seed=1, rank=r, world_size=2) for r in range(2)]
    ids = [torch.cat([_ids(next(s)) for _ in range(s.batches_per_epoch)]) for s in shards]
    assert len(ids[0]) == len(ids[1]) == 50
    assert not set(ids[0].tolist()) & set(ids[1].tolist())


@pytest.mark.parametrize("hflip", [False, True])
def test_stream_resume_exact(hflip):
    ref = ImageStream(_images(), 16, seed=5, hflip=hflip)
    batches = [next(ref) for _ in range(10)]
    first = ImageStream(_images(), 16, seed=5, hflip=hflip)
    for _ in range(7):  # into the second epoch
        next(first)
    state = first.state_dict()
    assert state == {"epoch": 1, "index": 1}
    resumed = ImageStream(_images(), 16, seed=5, hflip=hflip)
    resumed.load_state_dict(state)
    for expected in batches[7:]:
        assert torch.equal(next(resumed), expected)


def test_stream_hflip_flips_about_half():
    images = _images(n=64, h=3, w=7)
    images[:, 0, 0, 0] = 0
    images[:, 0, 1, :] = torch.arange(64, dtype=torch.uint8)[:, None]  # id in a symmetric row
    batch = to_uint8(next(ImageStream(images, 64, seed=0, hflip=True)))
    plain = images[to_uint8(next(ImageStream(images, 64, seed=0)))[:, 0, 1, 0].long()]
    assert torch.equal(batch[:, 0, 1, 0], plain[:, 0, 1, 0])  # same order as without flips
    flipped = (batch != plain).flatten(1).any(dim=1)
    assert 1 <= flipped.sum() <= 63
    assert torch.equal(batch[flipped], torch.flip(plain[flipped], dims=[-1]))


def test_stream_bad_input():
    with pytest.raises(GenkitError, match="uint8"):
        ImageStream(to_float(_images()), 8, seed=0)
    with pytest.raises(GenkitError, match="batch_size"):
        ImageStream(_images(n=10), 8, seed=0, world_size=2)
    for rank in (2, True, "0"):  # out of range, a bool, a string: one-line errors, as PairStream's
        with pytest.raises(GenkitError, match="rank must be an integer"):
            ImageStream(_images(), 8, seed=0, rank=rank, world_size=2)
    stream = ImageStream(_images(), 8, seed=0)
    with pytest.raises(GenkitError, match="batches per epoch"):
        stream.load_state_dict({"epoch": 0, "index": 99})


def test_imagefolder_keeps_the_order_across_decoding_threads(tmp_path):
    """More images than one thread's chunk (1,000): the result is still in ImageFolder's order."""
    n = 2100
    values = torch.arange(n) % 251  # pixel value i % 251 marks image i
    for i in range(n):
        _write_png(tmp_path / "c" / f"{i:05d}.png", torch.full((3, 2, 2), int(values[i]), dtype=torch.uint8))
    x = load_images("imagefolder", root=tmp_path)
    assert x.shape == (n, 3, 2, 2) and torch.equal(x[:, 0, 0, 0].long(), values)
