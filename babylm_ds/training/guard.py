"""Refuse a training run at start, before any model is built: out-of-range flags, an --out in use or
holding finished work, data or a --resume checkpoint that do not verify. Checkpoints are sealed with
the sha256 of their files before `latest` names them."""
import math
import os
import shutil

from babylm_ds.data import verify_data
from babylm_ds.models.manifest import CHECKSUMS
from babylm_ds.training.config import build_ds_config
from babylm_ds.training.dist import agree
from babylm_ds.utils.io import atomic_write_bytes, atomic_write_json, lock_dir, read_json, sha256_file

MAX_LR = 1.0  # beyond this an Adam step overflows fp32 (1e38) or wipes out the model (1e6)
RUN_FILES = ("checkpoints", "final", "final.tmp", "summary.json", "metrics.jsonl", "tb", "config.yaml", "args.json",
             "ds_config.json")


def check_train_args(cfg):
    """ValueError for a setting out of range (no file is read)."""
    o, run = cfg.optim, cfg.run
    if not (math.isfinite(o.lr) and 0 < o.lr <= MAX_LR):
        raise ValueError(f"--lr {o.lr:g} is out of range: use 0 < lr <= {MAX_LR:g}")
    if o.max_steps is not None and o.max_steps < 1 or not (math.isfinite(o.epochs) and o.epochs > 0):
        raise ValueError(f"--max-steps ({o.max_steps}) must be >= 1 and --epochs ({o.epochs}) > 0")
    if min(o.warmup_steps or 0, run.save_every, cfg.evaluation.eval_every) < 0 or run.log_every < 1:
        raise ValueError("--warmup-steps, --save-every and --eval-every must be >= 0, --log-every >= 1")
    if run.resume and run.force:
        raise ValueError("--resume continues the run in --out and --force deletes it: give one of them")


def resume_dir(run):
    """The checkpoint dir --resume names (`run`: Config.run)."""
    return os.path.join(run.out, "checkpoints") if run.resume in (None, "auto") else run.resume


def claim_out(run):
    """Rank 0: lock --out; refuse finished work without --resume or --force, and --resume with nothing to
    resume; --force deletes the earlier run's files (`run`: Config.run)."""
    lock_dir(run.out)
    if run.force:
        for name in RUN_FILES:
            path = os.path.join(run.out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.unlink(path)
        return
    if run.resume:
        if not os.path.isfile(os.path.join(resume_dir(run), "latest")):
            raise ValueError(f"--resume: nothing to resume in {resume_dir(run)} (no 'latest' checkpoint); "
                             "drop --resume to start a new run")
        return
    done = [n for n in ("checkpoints/latest", "final", "summary.json") if os.path.exists(os.path.join(run.out, n))]
    if done:
        raise ValueError(f"--out {run.out} holds an earlier run ({', '.join(done)}); pass --resume to continue it, "
                         "--force to replace it, or choose another --out")


def seal_checkpoint(ckpt_dir, tag):
    """Rank 0, after every rank saved `tag`: write its files' sha256, then point `latest` at it (atomic)."""
    tag_dir = os.path.join(ckpt_dir, tag)
    files = sorted(f for f in os.listdir(tag_dir) if f != CHECKSUMS and os.path.isfile(os.path.join(tag_dir, f)))
    atomic_write_json(os.path.join(tag_dir, CHECKSUMS), {f: sha256_file(os.path.join(tag_dir, f)) for f in files})
    atomic_write_bytes(os.path.join(ckpt_dir, "latest"), tag.encode())


def verify_checkpoint(ckpt_dir, rank=0, world=1):
    """The tag `latest` names, its files checked against its checksums.json (this rank's share)."""
    with open(os.path.join(ckpt_dir, "latest")) as f:
        tag = f.read().strip()
    fix = "start over with --force, or point `latest` at an earlier tag"
    sums = read_json(os.path.join(ckpt_dir, tag, CHECKSUMS), f"checkpoint {tag} is incomplete; {fix}")
    for name, digest in sorted(sums.items())[rank::world]:
        path = os.path.join(ckpt_dir, tag, name)
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint file {path} is missing; {fix}")
        if sha256_file(path) != digest:
            raise ValueError(f"checkpoint file {path} is corrupt (sha256 mismatch); {fix}")
    return tag


def start_run(cfg, rank, world):
    """On every rank, at start: claim --out (rank 0), verify the data and the --resume checkpoint (each rank
    hashes its share); an error on any rank is raised on all. Returns (meta, tag to resume or None)."""
    build_ds_config(cfg, world)  # batch sizes and the JSON config, checked before any model is built
    agree(lambda: rank == 0 and claim_out(cfg.run))
    meta = agree(lambda: verify_data(cfg.data.dir, rank, world, progress=rank == 0))
    tag = agree(lambda: verify_checkpoint(resume_dir(cfg.run), rank, world)) if cfg.run.resume else None
    return meta, tag
