"""Distributed sampler whose position (epoch, offset) can be restored for exact resumption."""
import itertools

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (seeded per-epoch shuffle, drop_last) that starts `start` samples into the
    epoch set by `set_position`: resuming at the same (epoch, start) yields the same remaining order."""

    def __init__(self, dataset, num_replicas, rank, seed=0, shuffle=True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch, start=0):
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self):
        return self.num_samples - self.start
