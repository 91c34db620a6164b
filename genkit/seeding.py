"""Counter-based seeds: one deterministic seed per (run seed, purpose, rank, index).

Drawing a fresh ``torch.Generator`` per batch or per step from a derived seed makes
every random draw a pure function of the run seed and a counter: there is no
generator state to save, and a resumed run draws exactly what an uninterrupted run
would have drawn.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed mixed from ``seed`` and ``parts`` (ints or strings)."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
