"""Content hashes of a processed dataset's samples: what resume, sharding and merge must reproduce."""

from __future__ import annotations

import hashlib

import torch


def sample_hashes(ds) -> list[tuple[int, str]]:
    """(sample_id, sha256 over every key and value of the sample) for each index entry, in index order."""
    hashes = []
    for entry in ds.index:
        sample = ds.load(entry)
        h = hashlib.sha256()
        for key in sorted(sample):
            value = sample[key]
            h.update(key.encode())
            h.update(value.numpy().tobytes() if isinstance(value, torch.Tensor) else repr(value).encode())
        hashes.append((entry["sample_id"], h.hexdigest()))
    return hashes
