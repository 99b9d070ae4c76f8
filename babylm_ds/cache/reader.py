"""Random-access reader: sequence id → (ids, logprobs, tail), stateless, via per-shard memmaps."""
import bisect
import os

import numpy as np
import torch

from .format import check_compatible, load_manifest, record_dtype, verify


class TeacherCache:
    """`TeacherCache(dir).get(idx) -> (ids [B,T,k] long, logprobs [B,T,k] float, tail [B,T] float)`.

    Any sampler order works: a shard covers [start, end) and a record's offset is idx − start.
    """

    def __init__(self, cache_dir, manifest=None):
        self.dir = os.fspath(cache_dir)
        self.manifest = manifest or load_manifest(self.dir)
        self.config = self.manifest["config"]
        self.dtype = record_dtype(self.config)
        self.shards = sorted(self.manifest["shards"], key=lambda s: s["start"])
        self.starts = [s["start"] for s in self.shards]
        self._maps = {}

    def __len__(self):
        return self.config["num_sequences"]

    def check_compatible(self, meta):
        check_compatible(self.manifest, meta, self.dir)

    def verify(self, rank=0, world=1, progress=False):
        """Raise ValueError naming the first missing, truncated or corrupt shard of this rank's share."""
        if problems := verify(self.dir, rank, world, progress):
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ValueError(f"teacher cache {self.dir}: {problems[0]}{more}; rebuild it with "
                             "launchers/cache_logits.py (rerunning the same command redoes bad shards)")

    def _map(self, j):
        if j not in self._maps:
            path = os.path.join(self.dir, self.shards[j]["path"])
            if not os.path.isfile(path):
                raise ValueError(f"teacher cache shard missing: {path}; run `babylm-ds cache verify {self.dir}`")
            self._maps[j] = np.memmap(path, dtype=self.dtype, mode="r")
        return self._maps[j]

    def records(self, idx):
        idx = [int(i) for i in torch.as_tensor(idx).flatten()]
        out = []
        for i in idx:
            if not 0 <= i < len(self):
                raise IndexError(f"sequence id {i} outside the cache's [0, {len(self)})")
            j = bisect.bisect_right(self.starts, i) - 1
            out.append(self._map(j)[i - self.starts[j]])
        return np.stack(out)

    def get(self, idx, device=None):
        rec = self.records(idx)
        ids = torch.from_numpy(rec["ids"].astype(np.int64))
        logprobs = torch.from_numpy(rec["logprobs"].astype(np.float32))
        tail = torch.from_numpy(rec["tail"].astype(np.float32))
        return ids.to(device), logprobs.to(device), tail.to(device)
