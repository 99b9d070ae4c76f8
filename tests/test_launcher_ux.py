"""What a newcomer sees: launchers' --help without DeepSpeed, the pipeline's terminal output without noise."""
import io
import os
import subprocess
import sys

from babylm_ds.training import jobs
from launch import ROOT


def test_help_imports_no_deepspeed_and_sets_extension_dir():
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    for name in ("pretrain", "distill", "cache_logits"):
        proc = subprocess.run([sys.executable, "-X", "importtime", f"launchers/{name}.py", "--help"], cwd=ROOT,
                              env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                    if line.startswith("import time")}
        assert "babylm_ds.config" in imported, name  # the importtime listing is what we think it is
        assert not imported & {"deepspeed", "datasets", "babylm_ds.training.trainer"}, name
    # the preamble every launcher imports first keeps DeepSpeed's compiled ops in the checkout
    code = "import os, runpy; runpy.run_path('launchers/_preamble.py'); print(os.environ['TORCH_EXTENSIONS_DIR'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == str(ROOT / ".torch_extensions"), proc.stderr[-2000:]


def test_relay_keeps_stage_progress_and_results_logs_everything(tmp_path):
    lines = ["[2026-11-29 18:00:00,000] [INFO] [runner.py:607:main] "
             "cmd = python -u -m deepspeed.launcher.launch\n",
             "[2026-11-29 18:00:00,000] [WARNING] [runner.py:232:fetch_hostfile] "
             "Unable to find hostfile, will proceed\n",
             "W1129 19:06:16.308000 19937 torch/utils/cpp_extension.py:183] "
             "No CUDA runtime is found, using CUDA_HOME\n",
             "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully\n",
             "\r", "  0%|          | 0/3 [00:00<?, ?it/s]/venv/torch/c10d_logger.py:83: "
             "FutureWarning: `x` is deprecated\n",
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
    assert out.getvalue() == ("\r  0%|          | 0/3 [00:00<?, ?it/s]" + "".join(lines[7:-1])
                              + "no newline at the end\n")
