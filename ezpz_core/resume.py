"""Putting a data loader back where an interrupted epoch left it, without replaying it.

The order of an epoch comes from (seed, epoch) or from the RNG at the epoch's
start, so the Trainer restores that RNG, rebuilds the epoch's batch order and
starts it at the saved batch. Only batch *indices* are skipped: no sample is
loaded or passed through the model twice.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sized
from typing import Any

log = logging.getLogger("ezpz")


class SkipBatches:
    """A batch sampler yielding another's epoch order from batch ``skip`` on.

    ``prepare`` draws the wrapped sampler's randomness (a RandomSampler seeds
    itself from the global RNG on first use) at the moment the original run
    did, right after the DataLoader drew its worker seed, so the RNG stream
    after it matches the uninterrupted run exactly.
    """

    def __init__(self, batch_sampler: Iterable[list[int]], skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip
        self._iterator: Iterator[list[int]] = iter(())
        self._prepared = False

    def prepare(self) -> None:
        """Position the wrapped order; runs once, whoever asks first."""
        if not self._prepared:
            self._prepared = True
            self._iterator = iter(self.batch_sampler)
            for _ in itertools.islice(self._iterator, self.skip):
                pass

    def __iter__(self) -> Iterator[list[int]]:
        self.prepare()
        yield from self._iterator

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)  # type: ignore[arg-type]


def position(loader: Iterable[Any], skip: int) -> Iterable[Any]:
    """``loader``'s current epoch starting at batch ``skip``."""
    if skip == 0:
        return loader
    if hasattr(loader, "start_step"):  # loaders that can seek (ezpz's text batches)
        loader.start_step = skip
        return loader
    from torch.utils.data import DataLoader

    if isinstance(loader, DataLoader) and loader.batch_sampler is not None:
        workers = loader.num_workers
        return DataLoader(
            loader.dataset,
            batch_sampler=SkipBatches(loader.batch_sampler, skip),
            num_workers=workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context if workers else None,
            generator=loader.generator,
            prefetch_factor=loader.prefetch_factor if workers else None,
            persistent_workers=loader.persistent_workers,
        )
    if isinstance(loader, (list, tuple)):
        return loader[skip:]
    log.warning("resuming by reading and discarding %d batches: %s cannot seek",
                skip, type(loader).__name__)
    return itertools.islice(loader, skip, None)


def prepare(batches: Iterable[Any]) -> None:
    """Draw the epoch order's randomness now, if ``batches`` was positioned by ``position``."""
    sampler = getattr(batches, "batch_sampler", None)
    if isinstance(sampler, SkipBatches):
        sampler.prepare()


def length(loader: Iterable[Any]) -> int | None:
    """Batches per epoch, or None (a DataLoader over an IterableDataset raises in ``len``)."""
    if not isinstance(loader, Sized):
        return None
    try:
        return len(loader)
    except TypeError:
        return None


def generators(loader: Iterable[Any]) -> list[Any]:
    """Private RNGs a loader draws its epoch order from, besides the global one."""
    found = [getattr(loader, "generator", None)]
    sampler = getattr(loader, "sampler", None)
    found.append(getattr(sampler, "generator", None))
    return [g for g in found if g is not None]
