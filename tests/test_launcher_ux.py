"""What a newcomer sees: launchers' --help without DeepSpeed, the pipeline's terminal output without noise."""
import io
import os
import subprocess
import sys
import textwrap

from babylm_ds.training import jobs
from launch import ROOT


def test_help_imports_no_deepspeed_and_sets_extension_dir():
    code = textwrap.dedent("""
        import contextlib, io, os, runpy, sys
        for name in ("pretrain", "distill", "cache_logits"):
            sys.argv = [name, "--help"]
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    runpy.run_path(f"launchers/{name}.py", run_name="__main__")
                except SystemExit:
                    pass
            assert "usage:" in out.getvalue(), name
        print(sorted(m for m in ("deepspeed", "datasets", "babylm_ds.training.trainer") if m in sys.modules))
        print(os.environ["TORCH_EXTENSIONS_DIR"])
    """)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["[]", str(ROOT / ".torch_extensions")]


def test_relay_keeps_stage_progress_and_results_logs_everything(tmp_path):
    lines = ["[2026-11-29 18:00:00,000] [INFO] [runner.py:607:main] cmd = python -u -m deepspeed.launcher.launch\n",
             "[2026-11-29 18:00:00,000] [WARNING] [runner.py:232:fetch_hostfile] Unable to find hostfile, will proceed\n",
             "W1129 19:06:16.308000 19937 torch/utils/cpp_extension.py:183] No CUDA runtime is found, using CUDA_HOME\n",
             "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully\n",
             "\r", "  0%|          | 0/3 [00:00<?, ?it/s]/venv/torch/c10d_logger.py:83: FutureWarning: `x` is deprecated\n",
             "  return func(*args, **kwargs)\n",
             "\r", " 41%|####      | 61/150 [00:10<00:15]", "\r", "100%|##########| 150/150 [00:20<00:00]\n",
             "[ERROR] [launch.py:325:sigkill_handler] exits with return code = 1\n",
             "done: {'steps': 150, 'dev_loss': 4.9}\n", "no newline at the end"]
    src = tmp_path / "out.txt"
    src.write_bytes("".join(lines).encode())
    out, log = io.StringIO(), tmp_path / "stage.log"
    with open(src, "rb") as pipe, open(log, "wb") as f:
        jobs.relay(pipe, f, out)
    assert log.read_bytes() == "".join(lines).encode()
    assert out.getvalue() == ("\r  0%|          | 0/3 [00:00<?, ?it/s]" + "".join(lines[7:-1]) + "no newline at the end\n")
