"""DeepSpeed ZeRO training: `trainer` (the Trainer loop), `callbacks` (what runs around each step: dev loss,
zero-shot evaluation, checkpoints, the divergence guard, stop signals, the fault suite's hooks), `preempt`
(SIGTERM/SIGUSR1: save and stop, passed on by job runners), `config` (the DeepSpeed JSON filled in from
babylm_ds.config), `guard` (start-up checks, sealed checkpoints), `dist`, `sampler`, `schedule`, `pretrain` /
`distill` (what the launchers run) and `jobs` (launcher jobs and stamped stages for the study and the demo).
Import from the modules: `from babylm_ds.training.trainer import Trainer`."""
