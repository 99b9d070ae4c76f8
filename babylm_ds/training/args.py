"""Command-line flags shared by the launchers: training (pretrain, distill) and distributed (all)."""
from babylm_ds.models.manifest import add_verify_arg


def add_dist_args(group):
    """--dist-timeout and --local_rank, on an argparse parser or argument group."""
    group.add_argument("--dist-timeout", type=float, default=1800.0,
                       help="process-group timeout (s); in training also the seconds without progress (a "
                            "micro-step, dev batch, checkpoint) after which a rank stuck with a dead or stalled "
                            "peer exits with an error")
    group.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=-1,
                       help="set by the deepspeed launcher")
    return group


def add_train_args(parser):
    """Add the common training flags to an argparse parser and return it.

    Flags left at None fall back to the DeepSpeed JSON config (see `config.build_ds_config`)."""
    g = parser.add_argument_group("training")
    g.add_argument("--model", required=True, help="preset name (babylm_ds.models.preset_names()) or an HF model dir")
    add_verify_arg(g)  # preempt: --no-verify (a --model dir, distill's --teachers)
    g.add_argument("--data", required=True, help="prepared data dir (babylm-ds prepare)")
    g.add_argument("--ds_config", "--ds-config", dest="ds_config", default=None,
                   help="DeepSpeed JSON config (default: ZeRO-1 with the values below)")
    g.add_argument("--out", required=True, help="output dir: checkpoints/, tb/, metrics.jsonl, final/")
    g.add_argument("--micro-batch", type=int, default=None, help="sequences per rank per micro-step")
    g.add_argument("--grad-accum", type=int, default=None, help="micro-steps per optimizer step")
    g.add_argument("--lr", type=float, default=3e-4, help="peak learning rate, 0 < lr <= 1")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr = lr * ratio")
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--schedule", choices=("cosine", "linear", "constant"), default="cosine")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.95))
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument("--eval-every", type=int, default=0, help="dev loss every N steps (0: epoch ends only)")
    g.add_argument("--dev-max-seqs", type=int, default=None, help="cap on dev sequences per evaluation")
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: end only)")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint dir (default OUT/checkpoints, tag from its `latest`)")
    g.add_argument("--force", action="store_true",
                   help="delete an earlier run in --out (an --out holding one is refused without --resume/--force)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--bf16", action="store_true", default=None, help="bf16 mixed precision")
    g.add_argument("--clip", type=float, default=None, help="gradient clipping (max global norm)")
    g.add_argument("--eval-zeroshot", default=None,
                   help="comma list of zero-shot benchmarks at each epoch end, e.g. blimp,supplement,ewok")
    g.add_argument("--eval-limit", type=int, default=None, help="items per zero-shot paradigm")
    g.add_argument("--log-every", type=int, default=10, help="TensorBoard/progress-bar update interval")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    add_dist_args(g)
    return parser
