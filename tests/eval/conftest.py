"""Shared fixtures of the evaluation tests."""

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """An 8x8 RGB ImageFolder root with train/ and test/ splits of two classes, 16 images each.

    ``dark`` pixels are uniform in [10, 70), ``light`` in [170, 230) (seeded). Read-only for the tests:
    they put their runs and statistics folders elsewhere.
    """
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls, level in (("dark", 40), ("light", 200)):
            (root / split / cls).mkdir(parents=True)
            for i in range(16):
                pixels = rng.integers(level - 30, level + 30, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root
