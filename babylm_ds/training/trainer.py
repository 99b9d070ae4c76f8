"""DeepSpeed ZeRO training loop shared by the pretrain and distill launchers."""
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

from babylm_ds.models.card import architecture, facts, launch_command, write_card
from babylm_ds.models.manifest import write_manifest
from babylm_ds.models.remote_code import with_bos, write_remote_code
from babylm_ds.training import preempt
from babylm_ds.training.config import build_ds_config
from babylm_ds.training.dist import Watchdog, gather_state_dict, init_distributed
from babylm_ds.training.guard import resume_dir, seal_checkpoint
from babylm_ds.training.sampler import ResumableSampler
from babylm_ds.training.schedule import build_scheduler
from babylm_ds.utils.cli import EchoedError
from babylm_ds.utils.io import atomic_path, atomic_write_json

# Fault injection for tests: "rank:step" makes that rank die (os._exit(1)) once `step` optimizer steps are
# done; "rank:step:hang" makes it stall instead (the others then fail after --dist-timeout); "rank:step:nan"
# makes its next loss NaN (the run then stops as diverged).
FAULT_ENV = "BABYLM_DS_FAULT_AT_STEP"


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
    BOS by default, see `with_bos`), the generated modeling code of the project's own model families
    (`auto_map`, for trust_remote_code), manifest.json with size and sha256 of every file, and the model card
    (README.md) from `card`'s facts."""
    tmp = f"{out_dir}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model = fresh_copy(module, state_dict)
        model.save_pretrained(tmp, safe_serialization=True)
        write_remote_code(model, tmp)
        if tokenizer is not None:
            with_bos(tokenizer).save_pretrained(tmp)
        write_manifest(tmp)  # preempt: sizes and sha256, verified before the folder is read
        if card is not None:
            write_card(tmp, {**card, "architecture": architecture(model)})
    except OSError:  # e.g. a full disk: the previous out_dir stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


class Trainer:
    """Data-parallel ZeRO training of `model` on `train_ds` (items `{"input_ids", "idx"}`).

    loss_fn(engine, batch) -> (loss, {name: float}) defaults to causal-LM CE; its extra metrics are
    averaged over micro-steps and ranks and logged. `frozen_modules` (e.g. an online teacher) are put
    on the device in eval mode without gradients (bf16 under --bf16), outside the engine: they are
    neither optimized, checkpointed nor exported. Submodules of `model` that are trained but not part
    of the exported model are named by prefixes in `model.export_exclude` (e.g. ("kd_proj.",)).
    Dev loss is always the model's own CE. `card`: extra model-card facts (e.g. the distillation teachers)."""

    def __init__(self, args, model, train_ds, dev_ds, tokenizer, loss_fn=None, frozen_modules=(), card=None):
        self.args, self.model, self.train_ds, self.dev_ds, self.tokenizer = args, model, train_ds, dev_ds, tokenizer
        self.card = card
        self.loss_fn = loss_fn or causal_lm_loss
        self.frozen_modules = list(frozen_modules)
        self.rank, self.world = init_distributed(args.dist_timeout)
        self.cfg = build_ds_config(args, self.world)
        self.micro, self.accum = self.cfg["train_micro_batch_size_per_gpu"], self.cfg["gradient_accumulation_steps"]
        if self.cfg.get("bf16", {}).get("enabled") and not torch.cuda.is_available() and self.rank == 0:
            print("warning: bf16 on CPU is ≈7.7x slower than fp32 (measured on this project's tiny models); "
                  "leave --bf16 off on CPU", file=sys.stderr, flush=True)
        self.steps_per_epoch = len(train_ds) // (self.micro * self.world) // self.accum
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(train_ds)} training sequences are fewer than one global batch "
                             f"({self.micro} x {self.accum} x {self.world}); lower --micro-batch/--grad-accum")
        self.total_steps = args.max_steps or math.ceil(args.epochs * self.steps_per_epoch)
        self.ckpt_dir = os.path.join(args.out, "checkpoints")
        self.metrics_path = os.path.join(args.out, "metrics.jsonl")
        self.tb = None
        self.watchdog = Watchdog(args.dist_timeout)  # started by train(); every unit of progress beats it

    # --- setup --------------------------------------------------------------------------------
    def _initialize(self):
        args, cfg = self.args, self.cfg
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        groups = [g for g in ({"params": [p for p in trainable if p.ndim >= 2], "weight_decay": args.weight_decay},
                              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}) if g["params"]]
        optimizer = None if "optimizer" in cfg else torch.optim.AdamW(groups, lr=args.lr, betas=tuple(args.betas))
        self.engine, *_ = deepspeed.initialize(
            model=self.model, model_parameters=groups, optimizer=optimizer, config=cfg,
            lr_scheduler=lambda opt: build_scheduler(opt, self.total_steps, args.warmup_steps, args.schedule,
                                                     args.min_lr_ratio))
        dtype = torch.bfloat16 if self.engine.bfloat16_enabled() else torch.float32
        for m in self.frozen_modules:
            m.to(device=self.engine.device, dtype=dtype).eval().requires_grad_(False)

    def _resume(self, tag):
        """Load checkpoint `tag` (verified by `guard.start_run`) of --resume's dir; returns the optimizer step
        to continue from."""
        load_dir = resume_dir(self.args)
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
        os.makedirs(self.args.out, exist_ok=True)
        atomic_write_json(os.path.join(self.args.out, "ds_config.json"), self.cfg)
        atomic_write_json(os.path.join(self.args.out, "args.json"), vars(self.args))
        kept = []
        if start_step and os.path.exists(self.metrics_path):
            redo = self._epoch_end_redone(start_step)  # preempt: its evaluation rows are written again
            with open(self.metrics_path) as f:
                kept = [line for line in f if (r := json.loads(line))["step"] < start_step
                        or r["step"] == start_step and not (redo and "train/loss" not in r)]
        with atomic_path(self.metrics_path) as tmp, open(tmp, "w") as f:
            f.writelines(kept)
        self.tb = SummaryWriter(os.path.join(self.args.out, "tb"), purge_step=start_step + 1 if start_step else None)

    def _log(self, step, record, prefix):
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"step": step, **{f"{prefix}{k}": v for k, v in record.items()}}) + "\n")
        if prefix != "train/" or step % self.args.log_every == 0 or step == self.total_steps:
            for k, v in record.items():
                self.tb.add_scalar(f"{prefix}{k}", v, step)

    # --- steps --------------------------------------------------------------------------------
    def _train_step(self, batches, poison=False):
        """One optimizer step over `accum` micro-batches; returns rank-averaged loss and metrics."""
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
            sums = values if sums is None else [a + b for a, b in zip(sums, values)]
            total += loss.item()
        stats = torch.tensor([total, *sums], dtype=torch.float64)
        dist.all_reduce(stats)
        stats = (stats / (self.world * self.accum)).tolist()
        return stats[0], dict(zip(names, stats[1:]))

    @torch.no_grad()
    def evaluate_dev(self):
        """Mean next-token CE over the dev set (every sequence once, split across ranks)."""
        n = min(len(self.dev_ds), self.args.dev_max_seqs or len(self.dev_ds))
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

    def _dev(self, step):
        loss = self.evaluate_dev()
        self._log(step, {"loss": loss}, "dev/")
        return loss

    def _epoch_end(self, step, last_dev, dev_loss=None):
        """Dev loss (unless just measured) and zero-shot scores at the end of an epoch; returns (dev loss, step)."""
        if last_dev != step:
            dev_loss = self._dev(step)
        if self.args.eval_zeroshot:
            self.evaluate_zeroshot(step)
        return dev_loss, step

    def evaluate_zeroshot(self, step):
        """Epoch-end zero-shot eval of a gathered fp32 copy on rank 0; the others wait at a barrier, so
        --dist-timeout must exceed the evaluation's duration."""
        state = gather_state_dict(self.engine.module)
        if self.rank == 0:
            from babylm_ds.evaluation import evaluate_model
            tasks = [t.strip() for t in self.args.eval_zeroshot.split(",") if t.strip()]
            model = fresh_copy(self.engine.module, state).to(self.engine.device)
            result = evaluate_model(model, self.tokenizer, tasks, limit=self.args.eval_limit)
            scores = {k: v for k, v in result.items() if isinstance(v, (int, float))}
            scores.update({k: v["mean"] for k, v in result.items() if isinstance(v, dict) and "mean" in v})
            self._log(step, scores, "zeroshot/")
            del model
        dist.barrier()
        self.watchdog.beat()

    def _epoch_end_redone(self, step):
        """Whether a run resumed at `step` first redoes that epoch end's evaluation: a checkpoint saved at an
        epoch's last step (--save-every, a stop signal) was written before the evaluation ran."""
        return step > 0 and step % self.steps_per_epoch == 0

    def _identity(self):
        """What a checkpoint must share with this run for --resume to continue it exactly."""
        return {"world_size": self.world, "micro": self.micro, "accum": self.accum, "seed": self.args.seed}

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

    # --- loop ---------------------------------------------------------------------------------
    def train(self, resume_tag=None):
        """Run to --max-steps / --epochs (from checkpoint `resume_tag` of --resume's dir), export OUT/final
        and end the process group; returns a summary dict (also written to OUT/summary.json). A non-finite
        loss or gradient norm stops the run with a ValueError before anything is saved or exported."""
        args = self.args
        self._initialize()
        step = self._resume(resume_tag) if resume_tag else 0
        self._open_logs(step)
        self.watchdog.start()
        dev_loss, last_dev, last_save, loss, tokens, seconds = None, -1, step, float("nan"), 0, 0.0
        if resume_tag and self._epoch_end_redone(step):
            dev_loss, last_dev = self._epoch_end(step, last_dev)
        sampler = ResumableSampler(self.train_ds, self.world, self.rank, seed=args.seed)
        fault = os.environ.get(FAULT_ENV, "-1:-1").split(":")
        fault_at = int(fault[0]), int(fault[1])
        bar = tqdm(total=self.total_steps, initial=step, disable=self.rank != 0, dynamic_ncols=True)
        preempt.arm()  # preempt: from here a stop signal is handled at the end of a step
        while step < self.total_steps:
            epoch, offset = divmod(step, self.steps_per_epoch)
            sampler.set_position(epoch, offset * self.accum * self.micro)
            loader = iter(DataLoader(self.train_ds, batch_size=self.micro, sampler=sampler, collate_fn=collate,
                                     drop_last=True, num_workers=args.num_workers,
                                     worker_init_fn=preempt.ignore_in_worker))
            for _ in range(offset, min(self.steps_per_epoch, offset + self.total_steps - step)):
                if (self.rank, step) == fault_at and fault[2:] != ["nan"]:
                    if fault[2:] == ["hang"]:
                        time.sleep(1e9)
                    os._exit(1)
                torch.manual_seed(hash((args.seed, self.rank, step)) % 2**63)  # dropout RNG, resume-exact
                lr, t0 = self.engine.get_lr()[0], time.perf_counter()
                batches = [next(loader) for _ in range(self.accum)]
                tokens_per_step = self.world * sum(b["input_ids"].numel() for b in batches)
                loss, metrics = self._train_step(batches, poison=(self.rank, step) == fault_at)
                dt = time.perf_counter() - t0
                step, tokens, seconds = step + 1, tokens + tokens_per_step, seconds + dt
                grad_norm = self.engine.get_global_grad_norm()
                if not math.isfinite(loss) or grad_norm is not None and not math.isfinite(float(grad_norm)):
                    bar.close()
                    kept = "no checkpoint yet; lower --lr or --clip"
                    if last_save:
                        kept = (f"the last good checkpoint {self.ckpt_dir}/step{last_save} is untouched; lower --lr "
                                "or --clip and rerun with --resume")
                    # every rank sees the same (all-reduced) loss and global norm: rank 0 says it
                    error = ValueError if self.rank == 0 else EchoedError
                    raise error(f"step {step}: loss {loss:g}, gradient norm {float(grad_norm or 0):g}: training "
                                f"diverged, stopped without saving or exporting ({kept})")
                record = {"loss": loss, "lr": lr, "tokens_per_s": tokens_per_step / dt,
                          **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}), **metrics}
                self._log(step, record, "train/")
                bar.update(1)
                if step % args.log_every == 0:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if args.eval_every and step % args.eval_every == 0:
                    dev_loss, last_dev = self._dev(step), step
                if args.save_every and step % args.save_every == 0:
                    self.save(step)
                    last_save = step
                if signame := preempt.requested(step):  # preempt: a signal on any rank: all save this step, stop
                    bar.close()
                    if last_save != step:
                        self.save(step)
                    if self.tb is not None:
                        self.tb.close()
                    preempt.stop(signame, f"at step {step}; checkpoint step{step} saved in {self.ckpt_dir}; "
                                          "rerun with --resume", self.rank)
            if step % self.steps_per_epoch == 0:
                dev_loss, last_dev = self._epoch_end(step, last_dev, dev_loss)
        preempt.disarm()  # preempt: finishing (final save, export): signals are ignored
        bar.close()
        if last_dev != step:
            dev_loss = self._dev(step)
        if last_save != step:
            self.save(step)
        state = gather_state_dict(self.engine.module)
        summary = {"steps": step, "train_loss": loss, "dev_loss": dev_loss, "world_size": self.world,
                   "train_tokens": tokens, "tokens_per_s": tokens / seconds if seconds else None,
                   "final_dir": os.path.join(args.out, "final")}
        if self.rank == 0:
            card = facts(args, summary, launch_command(self.world), self.cfg, self.card)
            export_hf(self.engine.module, state, self.tokenizer, summary["final_dir"], card)
            atomic_write_json(os.path.join(args.out, "summary.json"), summary)
            self.tb.close()
        dist.barrier()
        self.watchdog.stop()
        dist.destroy_process_group()  # a clean teardown: an implicit one at exit can abort (SIGABRT)
        return summary
