"""Slices and batches: the one way training and adaptation read their data (``torch.utils.data``).

A :class:`SliceDraws` sampler draws, in the main process and from a seeded
generator, every random choice of a batch: which volume and slice, where the
window sits (brain centre plus jitter), and the light augmentation of
adaptation (left-right flip, intensity scale and shift). A :class:`SliceDataset`
turns one draw into arrays, reading only that slice (and its 2.5D
neighbours) from a memory-mapped cache entry (:mod:`bigl.data.cache`) or an
in-memory :class:`~bigl.preprocess.PreparedVolume`. Because workers only carry
out draws, a seed gives the same batches whatever the number of worker
processes; under torchrun each rank draws from its own shard of the volumes
with its own seed (:func:`shard`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bigl.preprocess import SliceSampler, crop_or_pad_2d, stack_slices


class Draw(NamedTuple):
    """Every random choice behind one training window."""

    volume: int
    slice: int
    cy: float                 # window centre (y, x), pixels
    cx: float
    flip: bool                # left-right (adaptation's light augmentation)
    scale: float              # brain intensities -> scale * value + shift (1, 0: unchanged)
    shift: float


class SliceDraws(Sampler[list[Draw]]):
    """``n_batches`` batches of :class:`Draw` from brain slices, a share ``tumour_fraction`` from tumour slices.

    ``seed``: an int or a sequence of ints (e.g. ``(run seed, stream, rank)``);
    the draws depend on nothing else.
    """

    def __init__(self, volumes: Sequence, batch_size: int, n_batches: int, seed: int | Sequence[int], *,
                 tumour_fraction: float, jitter: int, augment: bool) -> None:
        self.sampler = SliceSampler(list(volumes), tumour_fraction)
        self.centers = [v.brain_center for v in volumes]
        self.batch_size, self.n_batches, self.seed = batch_size, n_batches, seed
        self.jitter, self.augment = jitter, augment

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[Draw]]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.n_batches):
            yield [self.draw(rng) for _ in range(self.batch_size)]

    def draw(self, rng: np.random.Generator) -> Draw:
        i, k = self.sampler.sample(rng)
        cy, cx = self.centers[i]
        if self.jitter:
            cy, cx = cy + rng.integers(-self.jitter, self.jitter + 1), cx + rng.integers(-self.jitter, self.jitter + 1)
        flip, scale, shift = False, 1.0, 0.0
        if self.augment:
            flip = bool(rng.random() < 0.5)
            scale, shift = float(rng.uniform(0.9, 1.1)), float(rng.uniform(-0.1, 0.1))
        return Draw(i, k, float(cy), float(cx), flip, scale, shift)


class SliceDataset(Dataset):
    """Carries out a :class:`Draw`: (image (C, h, w) float32,) or (image, target (h, w) int64).

    C = sequences x (2 * context + 1); background stays exactly 0.
    """

    def __init__(self, volumes: Sequence, patch: tuple[int, int], context: int = 0) -> None:
        self.volumes, self.patch, self.context = list(volumes), tuple(patch), context
        self.labelled = all(v.target is not None for v in self.volumes)

    def __len__(self) -> int:       # draws index the dataset; the sampler decides how many
        return len(self.volumes)

    def __getitem__(self, d: Draw) -> tuple[np.ndarray, ...]:
        v = self.volumes[d.volume]
        center = (d.cy, d.cx)
        img = crop_or_pad_2d(stack_slices(v.image, np.array([d.slice]), self.context)[0], center, self.patch)
        tgt = crop_or_pad_2d(np.asarray(v.target[d.slice]), center, self.patch) if self.labelled else None
        if d.flip:
            img = img[..., ::-1]
            tgt = tgt[:, ::-1] if tgt is not None else None
        if d.scale != 1.0 or d.shift != 0.0:
            img = np.where(img != 0, img * d.scale + d.shift, 0)
        img = np.ascontiguousarray(img, dtype=np.float32)
        return (img,) if tgt is None else (img, np.ascontiguousarray(tgt, dtype=np.int64))


def _seed_worker(seed: int, worker_id: int) -> None:
    # workers only carry out draws; seeded anyway so nothing in them depends on the parent's RNG state
    np.random.seed((seed + worker_id) % 2**32)
    torch.manual_seed(seed + worker_id)


def batches(volumes: Sequence, patch: tuple[int, int], *, batch_size: int, n_batches: int,
            seed: int | Sequence[int], tumour_fraction: float, jitter: int, augment: bool, context: int = 0,
            workers: int = 0, device: torch.device | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``n_batches`` batches (image (B, C, H, W), target (B, H, W) or None) on ``device``.

    ``workers`` > 0 cuts them in that many worker processes ahead of use; on
    CUDA they come in pinned memory and are copied without blocking. Called
    off the main thread (a GUI's background job) it loads in-process instead:
    forking a process that runs other threads (Qt's) can deadlock the child.
    """
    cuda = device is not None and torch.device(device).type == "cuda"
    if threading.current_thread() is not threading.main_thread():
        workers = 0
    draws = SliceDraws(volumes, batch_size, n_batches, seed, tumour_fraction=tumour_fraction, jitter=jitter,
                       augment=augment)
    first = seed if isinstance(seed, int) else int(np.random.SeedSequence(list(seed)).generate_state(1)[0])
    loader = DataLoader(SliceDataset(volumes, patch, context), batch_sampler=draws, num_workers=workers,
                        pin_memory=cuda, worker_init_fn=functools.partial(_seed_worker, first) if workers else None)
    for batch in loader:
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        if device is not None:
            x = x.to(device, non_blocking=cuda)
            y = y.to(device, non_blocking=cuda) if y is not None else None
        yield x, y


def sample_batch(volumes: Sequence, sampler: SliceSampler, patch: tuple[int, int], batch_size: int,
                 rng: np.random.Generator, *, jitter: int, augment: bool, context: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch drawn from ``rng`` in this process (no loader): what scripts that hold their own RNG use."""
    draws = SliceDraws(volumes, batch_size, 1, 0, tumour_fraction=sampler.tumour_fraction, jitter=jitter,
                       augment=augment)
    data = SliceDataset(volumes, patch, context)
    items = [data[draws.draw(rng)] for _ in range(batch_size)]
    x = torch.from_numpy(np.stack([it[0] for it in items]))
    return x, (torch.from_numpy(np.stack([it[1] for it in items])) if data.labelled else None)


def shard(volumes: list, rank: int, world_size: int) -> list:
    """This rank's share of the volumes (every ``world_size``-th); all of them when there are fewer than ranks."""
    return volumes[rank::world_size] if len(volumes) >= world_size else volumes
