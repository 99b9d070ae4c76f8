"""DeepSpeed ZeRO training loop shared by the pretrain and distill launchers; what runs around each step is in
`callbacks`."""
import json
import math
import os
import shutil
import sys
import time

import deepspeed
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from babylm_ds.config import dump, updated
from babylm_ds.models.card import architecture, facts, launch_command, write_card
from babylm_ds.models.manifest import write_manifest
from babylm_ds.models.remote_code import save_tokenizer, write_remote_code
from babylm_ds.training import preempt
from babylm_ds.training.callbacks import TrainState, default_callbacks
from babylm_ds.training.config import build_ds_config, resolve
from babylm_ds.training.dist import Watchdog, gather_state_dict, init_distributed
from babylm_ds.training.guard import resume_dir, seal_checkpoint
from babylm_ds.training.sampler import ResumableSampler
from babylm_ds.training.schedule import build_scheduler
from babylm_ds.utils.io import atomic_path, atomic_write_bytes, atomic_write_json


def collate(items):
    return {"input_ids": torch.stack([it["input_ids"] for it in items]),
            "idx": torch.tensor([int(it["idx"]) for it in items], dtype=torch.long)}


def causal_lm_loss(engine, batch):
    """Default loss: the model's own shifted next-token cross-entropy."""
    return engine(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss, {}


def fresh_copy(module, state_dict):
    """A plain fp32 CPU model of `module`'s class and config holding `state_dict`; entries under the
    prefixes in `module.export_exclude` (e.g. distillation projections) are left out."""
    model = type(module)(module.config).float()
    skip = tuple(getattr(module, "export_exclude", ()))
    model.load_state_dict({k: v for k, v in state_dict.items() if not (skip and k.startswith(skip))})
    return model.eval()


def export_hf(module, state_dict, tokenizer, out_dir, card=None):
    """Write `out_dir` atomically as a self-contained HF model dir: safetensors + config + tokenizer (adding
    BOS by default, loading in transformers 4.x too, see `save_tokenizer`), the generated modeling code of
    the project's own model families (`auto_map`, for trust_remote_code), manifest.json with the size and
    sha256 of every file (`models.manifest`, checked before any command reads the dir), and the model card
    (README.md) from `card`'s facts."""
    tmp = f"{out_dir}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model = fresh_copy(module, state_dict)
        model.save_pretrained(tmp, safe_serialization=True)
        write_remote_code(model, tmp)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        write_manifest(tmp)
        if card is not None:
            write_card(tmp, {**card, "architecture": architecture(model)})
    except OSError:  # e.g. a full disk: the previous out_dir stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


class Trainer:
    """Data-parallel ZeRO training of `model` on `train_ds` (items `{"input_ids", "idx"}`) as Config `cfg` says.

    loss_fn(engine, batch) -> (loss, {name: float}) defaults to causal-LM CE; its extra metrics are
    averaged over micro-steps and ranks and logged. `frozen_modules` (e.g. an online teacher) are put
    on the device in eval mode without gradients (bf16 under --bf16), outside the engine: they are
    neither optimized, checkpointed nor exported. Submodules of `model` that are trained but not part
    of the exported model are named by prefixes in `model.export_exclude` (e.g. ("kd_proj.",)).
    Dev loss is always the model's own CE. `card`: extra model-card facts (e.g. the distillation teachers).
    `callbacks`: what runs around each step (default `callbacks.default_callbacks(cfg)`). `command` (a key
    of babylm_ds.config.COMMANDS) picks the settings OUT/config.yaml shows."""

    def __init__(self, cfg, model, train_ds, dev_ds, tokenizer, loss_fn=None, frozen_modules=(), card=None,
                 callbacks=None, command="pretrain"):
        self.model, self.train_ds, self.dev_ds, self.tokenizer = model, train_ds, dev_ds, tokenizer
        self.card, self.command = card, command
        self.loss_fn = loss_fn or causal_lm_loss
        self.frozen_modules = list(frozen_modules)
        self.callbacks = default_callbacks(cfg) if callbacks is None else list(callbacks)
        self.rank, self.world = init_distributed(cfg.run.dist_timeout)
        self.ds_config = build_ds_config(cfg, self.world)
        self.micro = self.ds_config["train_micro_batch_size_per_gpu"]
        self.accum = self.ds_config["gradient_accumulation_steps"]
        if self.ds_config.get("bf16", {}).get("enabled") and not torch.cuda.is_available() and self.rank == 0:
            print("warning: bf16 on CPU is ≈7.7x slower than fp32 (measured on this project's tiny models); "
                  "leave --bf16 off on CPU", file=sys.stderr, flush=True)
        self.steps_per_epoch = len(train_ds) // (self.micro * self.world) // self.accum
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(train_ds)} training sequences are fewer than one global batch "
                             f"({self.micro} x {self.accum} x {self.world}); lower --micro-batch/--grad-accum")
        self.total_steps = cfg.optim.max_steps or math.ceil(cfg.optim.epochs * self.steps_per_epoch)
        warmup = cfg.optim.warmup_steps
        # the configuration this run resolves to, saved as OUT/config.yaml
        self.cfg = updated(resolve(cfg, self.ds_config), {
            "optim.max_steps": self.total_steps,
            "optim.warmup_steps": self.total_steps // 10 if warmup is None else warmup})
        self.ckpt_dir = os.path.join(cfg.run.out, "checkpoints")
        self.metrics_path = os.path.join(cfg.run.out, "metrics.jsonl")
        self.tb = self.bar = None
        self.watchdog = Watchdog(cfg.run.dist_timeout)  # started by train(); every unit of progress beats it

    # --- the loop -----------------------------------------------------------------------------
    def train(self, resume_tag=None):
        """Run to the configured steps (from checkpoint `resume_tag` of --resume's dir), export OUT/final and
        end the process group; returns a summary dict (also written to OUT/summary.json). A callback may
        stop the run early (`state.stop`): it is then checkpointed, not exported. A run resumed at an epoch's
        last step first runs that epoch end (its checkpoint was saved before the epoch-end evaluation)."""
        s = self.start(resume_tag)
        self.emit("on_train_start", s)
        if resume_tag and self.at_epoch_end(s.step):
            self.emit("on_epoch_end", s)
        with tqdm(total=self.total_steps, initial=s.step, disable=self.rank != 0, dynamic_ncols=True) as self.bar:
            while s.step < self.total_steps and s.stop is None:
                loader = self.loader(s.step)  # the rest of this epoch
                for _ in range(min(self.steps_per_epoch - s.step % self.steps_per_epoch, self.total_steps - s.step)):
                    self.emit("on_step_start", s)
                    self.step(s, loader)
                    self.emit("on_step_end", s)
                    if s.stop is not None:
                        break
                if self.at_epoch_end(s.step) and s.stop is None:
                    self.emit("on_epoch_end", s)
        self.emit("on_train_end", s)
        return self.finish(s)

    def emit(self, hook, s):
        for callback in self.callbacks:
            getattr(callback, hook)(self, s)

    # --- setup --------------------------------------------------------------------------------
    def start(self, resume_tag):
        """Build the engine, load `resume_tag`, open the logs; returns the loop's TrainState."""
        self._initialize()
        step = self._resume(resume_tag) if resume_tag else 0
        self._open_logs(step)
        self.watchdog.start()
        self.sampler = ResumableSampler(self.train_ds, self.world, self.rank, seed=self.cfg.run.seed)
        return TrainState(step=step, last_save=step)

    def _initialize(self):
        o = self.cfg.optim
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        groups = [g for g in ({"params": [p for p in trainable if p.ndim >= 2], "weight_decay": o.weight_decay},
                              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}) if g["params"]]
        optimizer = None if "optimizer" in self.ds_config else torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
        self.engine, *_ = deepspeed.initialize(
            model=self.model, model_parameters=groups, optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: build_scheduler(opt, self.total_steps, o.warmup_steps, o.schedule, o.min_lr_ratio))
        dtype = torch.bfloat16 if self.engine.bfloat16_enabled() else torch.float32
        for m in self.frozen_modules:
            m.to(device=self.engine.device, dtype=dtype).eval().requires_grad_(False)

    def _resume(self, tag):
        """Load checkpoint `tag` (verified by `guard.start_run`) of --resume's dir; returns the optimizer step
        to continue from."""
        load_dir = resume_dir(self.cfg.run)
        path, client = self.engine.load_checkpoint(load_dir, tag=tag)
        if path is None:
            raise ValueError(f"--resume {load_dir}: loading checkpoint {tag} failed")
        want = self._identity()
        got = {k: client.get(k) for k in want}
        if got != want:
            raise ValueError(f"--resume {load_dir}: checkpoint was written with {got}, this run has {want}; "
                             "exact resumption needs the same world size, batch sizes and seed")
        return client["step"]

    def _open_logs(self, start_step):
        if self.rank != 0:
            return
        from torch.utils.tensorboard import SummaryWriter
        out = self.cfg.run.out
        os.makedirs(out, exist_ok=True)
        atomic_write_json(os.path.join(out, "ds_config.json"), self.ds_config)
        atomic_write_bytes(os.path.join(out, "config.yaml"), dump(self.cfg, self.command).encode())
        kept = []
        if start_step and os.path.exists(self.metrics_path):
            with open(self.metrics_path) as f:
                redo = self.at_epoch_end(start_step)  # its epoch end's rows (dev/, zeroshot/) are written again
                kept = [line for line in f if (r := json.loads(line))["step"] < start_step
                        or r["step"] == start_step and not (redo and "train/loss" not in r)]
        with atomic_path(self.metrics_path) as tmp, open(tmp, "w") as f:
            f.writelines(kept)
        self.tb = SummaryWriter(os.path.join(out, "tb"), purge_step=start_step + 1 if start_step else None)

    def log(self, step, record, prefix):
        """Rank 0: append `record` to metrics.jsonl (keys prefixed) and TensorBoard (train/ every log_every)."""
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"step": step, **{f"{prefix}{k}": v for k, v in record.items()}}) + "\n")
        if prefix != "train/" or step % self.cfg.run.log_every == 0 or step == self.total_steps:
            for k, v in record.items():
                self.tb.add_scalar(f"{prefix}{k}", v, step)

    # --- steps --------------------------------------------------------------------------------
    def loader(self, step):
        """An iterator over this rank's micro-batches from optimizer step `step` to the end of its epoch."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        self.sampler.set_position(epoch, offset * self.accum * self.micro)
        return iter(DataLoader(self.train_ds, batch_size=self.micro, sampler=self.sampler, collate_fn=collate,
                               drop_last=True, num_workers=self.cfg.run.num_workers,
                               worker_init_fn=preempt.ignore_in_worker))

    def at_epoch_end(self, step):
        return step > 0 and step % self.steps_per_epoch == 0

    def step(self, s, loader):
        """One optimizer step over `accum` micro-batches of `loader`; updates `s`."""
        torch.manual_seed(hash((self.cfg.run.seed, self.rank, s.step)) % 2**63)  # dropout RNG, resume-exact
        s.lr, t0 = self.engine.get_lr()[0], time.perf_counter()
        batches = [next(loader) for _ in range(self.accum)]
        tokens = self.world * sum(b["input_ids"].numel() for b in batches)
        s.loss, s.metrics = self._micro_steps(batches, s.poison)
        dt = time.perf_counter() - t0
        s.step, s.tokens, s.seconds, s.tokens_per_s = s.step + 1, s.tokens + tokens, s.seconds + dt, tokens / dt
        s.grad_norm = self.engine.get_global_grad_norm()

    def _micro_steps(self, batches, poison=False):
        """Forward, backward and engine step of each micro-batch; returns rank-averaged loss and metrics."""
        total, names, sums = 0.0, None, None
        for batch in batches:
            batch = {k: v.to(self.engine.device) for k, v in batch.items()}
            loss, metrics = self.loss_fn(self.engine, batch)
            if poison:
                loss = loss * float("nan")
            self.engine.backward(loss)
            self.engine.step()
            self.watchdog.beat()
            names = names or sorted(metrics)
            values = [float(metrics[k]) for k in names]
            sums = values if sums is None else [a + b for a, b in zip(sums, values, strict=True)]
            total += loss.item()
        stats = torch.tensor([total, *sums], dtype=torch.float64)
        dist.all_reduce(stats)
        stats = (stats / (self.world * self.accum)).tolist()
        return stats[0], dict(zip(names, stats[1:], strict=True))

    # --- evaluation and checkpoints (called by the callbacks) ---------------------------------
    @torch.no_grad()
    def evaluate_dev(self):
        """Mean next-token CE over the dev set (every sequence once, split across ranks)."""
        n = min(len(self.dev_ds), self.cfg.evaluation.dev_max_seqs or len(self.dev_ds))
        mine = list(range(self.rank, n, self.world))
        per_rank = math.ceil(n / self.world)
        weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))  # equal batch counts for ZeRO-3
        mine += [0] * (per_rank - len(mine))
        stats = torch.zeros(2, dtype=torch.float64)
        self.engine.eval()
        for i in range(0, per_rank, self.micro):
            ids = collate([self.dev_ds[j] for j in mine[i:i + self.micro]])["input_ids"].to(self.engine.device)
            logits = self.engine(input_ids=ids).logits.float()
            ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
            w = torch.tensor(weights[i:i + self.micro], dtype=torch.float64)
            stats += torch.stack([(ce.view(len(w), -1).sum(1).double().cpu() * w).sum(), w.sum() * ce.numel() / len(w)])
            self.watchdog.beat()
        self.engine.train()
        dist.all_reduce(stats)
        return (stats[0] / stats[1]).item() if n else float("nan")

    def dev(self, step):
        """Dev loss at `step`, logged."""
        loss = self.evaluate_dev()
        self.log(step, {"loss": loss}, "dev/")
        return loss

    def evaluate_zeroshot(self, step, tasks, limit):
        """Zero-shot eval of a gathered fp32 copy on rank 0; the others wait at a barrier, so --dist-timeout
        must exceed the evaluation's duration."""
        state = gather_state_dict(self.engine.module)
        if self.rank == 0:
            from babylm_ds.evaluation import evaluate_model
            model = fresh_copy(self.engine.module, state).to(self.engine.device)
            result = evaluate_model(model, self.tokenizer, tasks, limit=limit)
            scores = {k: v for k, v in result.items() if isinstance(v, (int, float))}
            scores.update({k: v["mean"] for k, v in result.items() if isinstance(v, dict) and "mean" in v})
            self.log(step, scores, "zeroshot/")
            del model
        dist.barrier()
        self.watchdog.beat()

    def _identity(self):
        """What a checkpoint must share with this run for --resume to continue it exactly."""
        return {"world_size": self.world, "micro": self.micro, "accum": self.accum, "seed": self.cfg.run.seed}

    def save(self, step):
        """Checkpoint `step`; `latest` names it only once it is complete and sealed with checksums, so a
        failed save (kill, full disk) leaves the last good checkpoint in charge (its partial dir removed)."""
        client, tag = {"step": step, **self._identity()}, f"step{step}"
        try:
            self.engine.save_checkpoint(self.ckpt_dir, tag=tag, client_state=client, save_latest=False)
            if self.rank == 0:
                seal_checkpoint(self.ckpt_dir, tag)
        except OSError:
            if self.rank == 0:
                shutil.rmtree(os.path.join(self.ckpt_dir, tag), ignore_errors=True)
            raise
        dist.barrier()
        self.watchdog.beat()

    # --- the end ------------------------------------------------------------------------------
    def finish(self, s):
        """Export OUT/final (unless stopped early), write summary.json, end the process group."""
        out = self.cfg.run.out
        summary = {"steps": s.step, "train_loss": s.loss, "dev_loss": s.dev_loss, "world_size": self.world,
                   "train_tokens": s.tokens, "tokens_per_s": s.tokens / s.seconds if s.seconds else None,
                   "final_dir": os.path.join(out, "final")}
        if s.stop is not None:
            summary.update(stopped=s.stop, final_dir=None)
        else:
            state = gather_state_dict(self.engine.module)
        if self.rank == 0:
            if s.stop is None:
                card = facts(self.cfg, summary, launch_command(self.world), self.ds_config, self.card)
                export_hf(self.engine.module, state, self.tokenizer, summary["final_dir"], card)
                atomic_write_json(os.path.join(out, "summary.json"), summary)
            self.tb.close()
        dist.barrier()
        self.watchdog.stop()
        dist.destroy_process_group()  # a clean teardown: an implicit one at exit can abort (SIGABRT)
        return summary
