"""Index samplers for the training recipes. All are deterministic for (seed, epoch): call ``set_epoch``.

- :class:`IdentityBalancedBatchSampler`: P identities x K images per batch (triplet / PK training).
- :class:`SameIdentityPairSampler`: (image, another image of the same identity), DG-Net's positive pairing.
- :class:`VerificationPairSampler`: FD-GAN's pairs, one positive then `num_negatives` negatives per anchor.
- :class:`UnpairedDomainSampler`: (source index, target index) drawn independently, SA-GAN's two domains.
- :class:`ShuffledBatchSampler`: plain shuffled mini-batches (ID-classification training).

Pair samplers yield tuples of indices; :class:`reidfast.data.loader.ImageDataset` accepts such a tuple and returns
the images stacked along a group dimension.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _pids_of(samples_or_pids) -> np.ndarray:
    items = list(samples_or_pids)
    if items and not isinstance(items[0], (int, np.integer)):
        items = [s[1] for s in items]  # Sample(path, pid, camid)
    return np.asarray(items, dtype=np.int64)


def _indices_by_pid(pids: np.ndarray) -> dict[int, np.ndarray]:
    groups = defaultdict(list)
    for index, pid in enumerate(pids.tolist()):
        groups[pid].append(index)
    return {pid: np.asarray(idx) for pid, idx in sorted(groups.items())}


class _SeededSampler(Sampler):
    def __init__(self, seed: int):
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])


class IdentityBalancedBatchSampler(_SeededSampler):
    """Batches of `num_ids` identities x `num_instances` images (the PK sampler), as lists of indices.

    Each epoch shuffles every identity's images and cuts them into groups of K (an identity with fewer than K
    images is padded by drawing again from its own images, so every group has K); batches draw P distinct
    identities among those with groups left, until fewer than P remain. Batch size is P x K.
    """

    def __init__(self, samples_or_pids: Sequence, num_ids: int, num_instances: int, seed: int = 0):
        super().__init__(seed)
        if num_ids < 1 or num_instances < 1:
            raise ValueError(f"IdentityBalancedBatchSampler: num_ids and num_instances must be >= 1, "
                             f"got {num_ids} and {num_instances}")
        self.by_pid = _indices_by_pid(_pids_of(samples_or_pids))
        if len(self.by_pid) < num_ids:
            raise ValueError(f"IdentityBalancedBatchSampler: num_ids={num_ids} but the data has only "
                             f"{len(self.by_pid)} identities")
        self.num_ids, self.num_instances = num_ids, num_instances

    def _groups(self, rng) -> dict[int, list[np.ndarray]]:
        k = self.num_instances
        groups = {}
        for pid, idx in self.by_pid.items():
            idx = rng.permutation(idx)
            if len(idx) < k:
                idx = np.concatenate([idx, rng.choice(idx, k - len(idx), replace=True)])
            groups[pid] = [idx[i:i + k] for i in range(0, len(idx) - k + 1, k)]
        return groups

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        groups = self._groups(rng)
        while True:
            available = [pid for pid, g in groups.items() if g]
            if len(available) < self.num_ids:
                return
            batch = []
            for pid in rng.choice(available, self.num_ids, replace=False).tolist():
                batch.extend(groups[pid].pop().tolist())
            yield batch

    def __len__(self) -> int:
        # The count depends on the epoch's random draws; the draws are cheap, so replay them (once per epoch).
        if getattr(self, "_length_epoch", None) != self.epoch:
            self._length, self._length_epoch = sum(1 for _ in self), self.epoch
        return self._length


class SameIdentityPairSampler(_SeededSampler):
    """Every index once per epoch (shuffled), paired with a different image of the same identity.

    An identity with a single image is paired with itself. Yields ``(index, partner)``.
    """

    def __init__(self, samples_or_pids: Sequence, seed: int = 0):
        super().__init__(seed)
        self.pids = _pids_of(samples_or_pids)
        self.by_pid = _indices_by_pid(self.pids)

    def partner(self, index: int, rng: np.random.Generator) -> int:
        same = self.by_pid[int(self.pids[index])]
        if len(same) == 1:
            return int(index)
        # draw among the others: pick a slot in the list without `index`
        choice = int(rng.integers(len(same) - 1))
        position = int(np.searchsorted(same, index))
        return int(same[choice + (choice >= position)])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = self._rng()
        for index in rng.permutation(len(self.pids)).tolist():
            yield index, self.partner(index, rng)

    def __len__(self) -> int:
        return len(self.pids)


class VerificationPairSampler(_SeededSampler):
    """For each anchor (every index once, shuffled): one positive pair, then `num_negatives` negative pairs.

    Yields ``(anchor, other)``; the pair is positive when both pids match. Positives are another image of the
    anchor's identity (the anchor itself if it has no other); negatives are images of other identities.
    """

    def __init__(self, samples_or_pids: Sequence, num_negatives: int = 3, seed: int = 0):
        super().__init__(seed)
        self.pids = _pids_of(samples_or_pids)
        if len(set(self.pids.tolist())) < 2:
            raise ValueError("VerificationPairSampler: negatives need at least two identities")
        if num_negatives < 0:
            raise ValueError(f"VerificationPairSampler: num_negatives must be >= 0, got {num_negatives}")
        self.num_negatives = num_negatives
        self._positives = SameIdentityPairSampler(self.pids, seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = self._rng()
        n = len(self.pids)
        for anchor in rng.permutation(n).tolist():
            yield anchor, self._positives.partner(anchor, rng)
            drawn = 0
            while drawn < self.num_negatives:  # rejection: cheap while no identity dominates the data
                other = int(rng.integers(n))
                if self.pids[other] != self.pids[anchor]:
                    drawn += 1
                    yield anchor, other

    def __len__(self) -> int:
        return len(self.pids) * (1 + self.num_negatives)


class UnpairedDomainSampler(_SeededSampler):
    """``(source index, target index)`` pairs with independent shuffles of the two domains.

    An epoch has `num_samples` pairs (default: the larger domain's size); the smaller domain is reshuffled each
    time it runs out, so both domains are covered evenly.
    """

    def __init__(self, num_source: int, num_target: int, num_samples: int | None = None, seed: int = 0):
        super().__init__(seed)
        if num_source < 1 or num_target < 1:
            raise ValueError(f"UnpairedDomainSampler: both domains need images, got {num_source} and {num_target}")
        self.num_source, self.num_target = num_source, num_target
        self.num_samples = num_samples if num_samples is not None else max(num_source, num_target)

    @staticmethod
    def _stream(n: int, count: int, rng) -> np.ndarray:
        reps = -(-count // n)
        return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = self._rng()
        a = self._stream(self.num_source, self.num_samples, rng)
        b = self._stream(self.num_target, self.num_samples, rng)
        return iter(zip(a.tolist(), b.tolist()))

    def __len__(self) -> int:
        return self.num_samples


class ShuffledBatchSampler(_SeededSampler):
    """Batches of `batch_size` indices from a fresh permutation each epoch (plain shuffled mini-batches).

    With ``drop_last`` (the default, as ID-classification training uses) the short last batch is dropped.
    """

    def __init__(self, num_samples: int, batch_size: int, drop_last: bool = True, seed: int = 0):
        super().__init__(seed)
        if batch_size < 1:
            raise ValueError(f"ShuffledBatchSampler: batch_size must be >= 1, got {batch_size}")
        if num_samples < (batch_size if drop_last else 1):
            raise ValueError(f"ShuffledBatchSampler: {num_samples} samples cannot fill one batch of {batch_size}")
        self.num_samples, self.batch_size, self.drop_last = num_samples, batch_size, drop_last

    def __iter__(self) -> Iterator[list[int]]:
        order = self._rng().permutation(self.num_samples).tolist()
        stop = len(self) * self.batch_size
        for start in range(0, stop, self.batch_size):
            yield order[start:start + self.batch_size]

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)


class BatchedSampler(Sampler):
    """Consecutive items of a seeded sampler (e.g. :class:`SameIdentityPairSampler`'s pairs) grouped into
    batches of `batch_size`; ``set_epoch`` is passed on, so the batches are deterministic for (seed, epoch).
    With ``drop_last`` (the default) a short last batch is dropped."""

    def __init__(self, sampler: _SeededSampler, batch_size: int, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"BatchedSampler: batch_size must be >= 1, got {batch_size}")
        if len(sampler) < (batch_size if drop_last else 1):
            raise ValueError(f"BatchedSampler: {len(sampler)} items cannot fill one batch of {batch_size}")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list]:
        batch = []
        for item in self.sampler:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)
