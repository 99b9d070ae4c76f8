"""Faults and bad inputs: one-line CLI errors, readers that verify before use (data, cache, checkpoints),
locks and refused overwrites, full disks, ranks that die with their launcher, and the quick subset of
benchmarks/faults.py (kill -9 + resume, planted bad inputs, /dev/shm left clean)."""
import argparse
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from babylm_ds.cache import TeacherCache, claim_cache, load_manifest
from babylm_ds.config import parse
from babylm_ds.data import verify_data
from babylm_ds.data.pack import fingerprint
from babylm_ds.models import check_model_arg
from babylm_ds.training.guard import check_train_args, claim_out, seal_checkpoint, verify_checkpoint
from babylm_ds.utils.cli import EchoedError, run_cli
from babylm_ds.utils.io import lock_dir
from launch import HANG_S, LAUNCH_ENV, ROOT
from test_cache import build, make_config, tree


def _cfg(*argv):
    return parse("pretrain", ["--model", "m", "--data", "d", "--out", "o", *argv])


def test_run_cli_one_line_and_debug(capsys, monkeypatch):
    def main(argv):
        raise FileNotFoundError(f"no such thing: {argv}\nsecond line")
    assert run_cli(main, ["x"], prog="prog") == 1
    err = capsys.readouterr().err
    assert err == "prog: error: no such thing: ['x'] second line\n"
    with pytest.raises(FileNotFoundError):
        run_cli(main, ["x", "--debug"])
    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_cli(lambda argv: {}["missing"], [])


def test_failed_job_says_why(tmp_path):
    """A job run by the pipeline or a study fails with its own error line, the log and the command."""
    from babylm_ds.training.jobs import JobError, run_cmd
    job = "import sys; print('noise'); print('job.py: error: shard x is corrupt', file=sys.stderr); sys.exit(1)"
    with pytest.raises(JobError, match=r"^job.py: error: shard x is corrupt — command failed \(exit 1; see .*job"):
        run_cmd([sys.executable, "-c", job], dict(os.environ), str(tmp_path / "job.log"))


def _agree_rank(rank, port, results):
    import torch.distributed as dist

    from babylm_ds.training.dist import agree
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    def check():
        if rank == 1:
            raise OSError("shard x is corrupt")

    def main(argv):
        try:
            agree(check)
        except ValueError as e:
            results[rank] = (type(e).__name__, str(e))
            raise
    results[f"exit{rank}"] = run_cli(main, [], prog="prog")


def test_agreed_error_is_printed_by_one_rank(capfd):
    """An anticipated error on rank 1 stops both ranks; rank 1 raises it, rank 0 an EchoedError that
    run_cli does not print: a 2-rank job says it once."""
    import torch.multiprocessing as mp

    from babylm_ds.training.dist import free_port
    results = mp.Manager().dict()
    mp.spawn(_agree_rank, args=(free_port(), results), nprocs=2)
    assert results[0] == ("EchoedError", "shard x is corrupt") and results[1] == ("ValueError", "shard x is corrupt")
    assert results["exit0"] == results["exit1"] == 1
    assert capfd.readouterr().err.count("prog: error: shard x is corrupt") == 1

    def echoed(argv):
        raise EchoedError("said elsewhere")
    assert run_cli(echoed, [], prog="p") == 1 and "said elsewhere" not in capfd.readouterr().err


def test_train_args_and_model_vocab_checked_up_front(tmp_path):
    for lr in ("1e38", "1e6", "0", "-1", "nan"):
        with pytest.raises(ValueError, match="--lr .* out of range"):
            check_train_args(_cfg("--lr", lr))
    check_train_args(_cfg("--lr", "1"))
    with pytest.raises(ValueError, match="--resume .* --force"):
        check_train_args(_cfg("--resume", "--force"))
    with pytest.raises(ValueError, match="vocab_size=500: the vocabulary size comes from the data"):
        check_model_arg("llama-tiny", 1000, {"vocab_size": 500})
    from babylm_ds.models import build_model
    build_model("llama-tiny", vocab_size=600, num_hidden_layers=1).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="has vocab_size 600, the data 1000"):
        check_model_arg(str(tmp_path / "m"), 1000, {})


def _damage(data, damage):
    meta = json.loads((data / "meta.json").read_text())
    shard = data / meta["splits"]["train"]["shards"][0]["path"]
    ids = np.fromfile(shard, "<u2")
    if damage == "flip":
        ids[100] ^= 1
    elif damage == "truncate":
        ids = ids[:-3]
    elif damage == "sha256":
        meta["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    elif damage == "vocab_size":
        meta["vocab_size"] = 900
    elif damage == "token_id":  # consistent checksums, an id beyond the vocabulary
        import hashlib
        ids[7] = 1000
        meta["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
        meta["fingerprint"] = fingerprint(meta)
    shard.write_bytes(ids.tobytes())
    text = json.dumps(meta)
    (data / "meta.json").write_text(text + "}" if damage == "malformed" else text)


@pytest.mark.parametrize("damage,msg", [("flip", "train/shard_00000.bin checksum mismatch"),
                                        ("truncate", "train/shard_00000.bin has .* bytes"),
                                        ("sha256", "meta.json: fingerprint does not match"),
                                        ("vocab_size", "meta.json: vocab_size 900 but the tokenizer has 1000"),
                                        ("token_id", "holds token id 1000 >= vocab_size 1000"),
                                        ("malformed", "meta.json is not valid JSON")])
def test_verify_data_names_the_bad_file(tiny_data_dir, tmp_path, damage, msg):
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    assert verify_data(data)["vocab_size"] == 1000
    _damage(data, damage)
    with pytest.raises(ValueError, match=msg) as e:
        for rank in (0, 1):  # each rank hashes its share; the share with shard 0 must catch it
            verify_data(data, rank, 2)
    assert "babylm-ds prepare" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("damage,msg", [("k", "listed with .* bytes, but k=4"), ("malformed", "not valid JSON"),
                                        ("schema", "missing key config.k"), ("sha256", "sha256 mismatch"),
                                        ("flip", "sha256 mismatch"), ("missing", "missing shard")])
def test_cache_reader_refuses_damage_before_use(tmp_path, damage, msg):
    build(tmp_path, k=8)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    shard = tmp_path / manifest["shards"][1]["path"]
    if damage == "k":
        manifest["config"]["k"] = 4
    elif damage == "schema":
        del manifest["config"]["k"]
    elif damage == "sha256":
        manifest["shards"][1]["sha256"] = "f" * 64
    elif damage == "flip":
        shard.write_bytes(bytes([shard.read_bytes()[0] ^ 1]) + shard.read_bytes()[1:])
    elif damage == "missing":
        shard.unlink()
    text = json.dumps(manifest)
    (tmp_path / "manifest.json").write_text(text[:-5] if damage == "malformed" else text)
    with pytest.raises(ValueError, match=msg) as e:
        TeacherCache(tmp_path).verify()
    assert "manifest.json" in str(e.value) or shard.name in str(e.value)


def test_finished_cache_of_other_k_is_refused(tmp_path):
    manifest = build(tmp_path, k=8)
    claim_cache(tmp_path, make_config(8))  # same settings: resumed
    with pytest.raises(ValueError, match="other settings .*k 8 -> 4.*--force"):
        claim_cache(tmp_path, make_config(4))
    assert load_manifest(tmp_path) == manifest
    claim_cache(tmp_path, make_config(4), force=True)
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "shards").exists()


def test_lock_refuses_a_second_owner_and_frees_with_it_and_its_temp_files(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from babylm_ds.utils.io import lock_dir; "
                               f"lock_dir({str(tmp_path)!r}); print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    temps = [tmp_path / ".tmp-x1manifest.json", tmp_path / "shards" / ".tmp-x2000-064.bin"]
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "shards").mkdir()
        for p in [*temps, tmp_path / "shards" / "000-064.bin"]:
            p.write_bytes(b"half-written")  # as a killed atomic write leaves them
        with pytest.raises(ValueError, match=f"in use by another run \\(owner: pid {holder.pid} "):
            lock_dir(tmp_path)
        assert all(p.exists() for p in temps)  # the owner may still be writing them
    finally:
        holder.kill()
        holder.wait()
    lock_dir(tmp_path)  # the dead owner's lock is stale: taken over, with the temp files it left
    assert not any(p.exists() for p in temps) and (tmp_path / "shards" / "000-064.bin").exists()


def test_out_with_finished_work_needs_resume_or_force(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="nothing to resume"):
        claim_out(_cfg("--out", str(out), "--resume").run)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step4")
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="holds an earlier run .*--resume .*--force"):
        claim_out(_cfg("--out", str(out)).run)
    claim_out(_cfg("--out", str(out), "--resume").run)
    claim_out(_cfg("--out", str(out), "--force").run)
    assert sorted(os.listdir(out)) == [".lock"]


def test_checkpoint_sealed_then_verified(tmp_path):
    for tag in ("step2", "step4"):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "model_states.pt").write_bytes(tag.encode() * 100)
        seal_checkpoint(tmp_path, tag)
    assert (tmp_path / "latest").read_text() == "step4" and verify_checkpoint(tmp_path, 1, 2) == "step4"
    (tmp_path / "step4" / "model_states.pt").write_bytes(b"x" * 500)
    with pytest.raises(ValueError, match="model_states.pt is corrupt"):
        verify_checkpoint(tmp_path)
    (tmp_path / "step4" / "checksums.json").unlink()
    with pytest.raises(ValueError, match="checkpoint step4 is incomplete"):
        verify_checkpoint(tmp_path)


def _enospc(*_, **__):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_keeps_previous_good_files(tmp_path, monkeypatch):
    """ENOSPC from a fault-injecting writer during a cache shard, a checkpoint and an export: a clear
    OSError, and the files from before are intact (no temp files left)."""
    import babylm_ds.cache.writer as writer
    from babylm_ds.models import manifest
    from babylm_ds.training import trainer
    build(tmp_path / "cache", k=8)
    good = tree(tmp_path / "cache")
    shard = tmp_path / "cache" / json.loads((tmp_path / "cache" / "manifest.json").read_text())["shards"][2]["path"]
    shard.unlink()  # a resumed writer must redo this shard, and the disk is full
    class FullDisk(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[:10])
            _enospc()
    monkeypatch.setattr(writer, "open", lambda path, mode: FullDisk(path, "w"), raising=False)
    with pytest.raises(OSError, match="No space left"):
        build(tmp_path / "cache", k=8)
    assert tree(tmp_path / "cache") == {k: v for k, v in good.items() if not k.endswith(shard.name)}

    ckpt = tmp_path / "ckpt"
    (ckpt / "step2").mkdir(parents=True)
    (ckpt / "step2" / "states.pt").write_bytes(b"good")
    seal_checkpoint(ckpt, "step2")

    def save_checkpoint(save_dir, tag, **_):
        os.makedirs(os.path.join(save_dir, tag))
        open(os.path.join(save_dir, tag, "states.pt"), "wb").write(b"half")
        _enospc()
    fake = argparse.Namespace(engine=argparse.Namespace(save_checkpoint=save_checkpoint), rank=0, world=1,
                              micro=1, accum=1, args=argparse.Namespace(seed=0), ckpt_dir=str(ckpt),
                              _identity=lambda: {})
    with pytest.raises(OSError, match="No space left"):
        trainer.Trainer.save(fake, 4)
    assert sorted(os.listdir(ckpt)) == ["latest", "step2"] and verify_checkpoint(ckpt) == "step2"

    from babylm_ds.models import build_model
    model = build_model("llama-tiny", vocab_size=300, num_hidden_layers=1)
    trainer.export_hf(model, model.state_dict(), None, str(tmp_path / "final"))
    before = tree(tmp_path / "final")
    monkeypatch.setattr(manifest, "sha256_file", _enospc)
    with pytest.raises(OSError, match="No space left"):
        trainer.export_hf(model, model.state_dict(), None, str(tmp_path / "final"))
    assert tree(tmp_path / "final") == before and sorted(os.listdir(tmp_path)) == ["cache", "ckpt", "final"]


RANK = """import os, runpy, sys, time
ns = runpy.run_path(sys.argv[1])  # launchers/_preamble.py: records who launched this rank, asks for PDEATHSIG
from babylm_ds.training import preempt
if sys.argv[2] == "starting":  # still 'importing' when its launcher is killed: waits for the test's go
    print(os.getpid(), flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.05)
preempt.install(ns["STOPS"], ns["ANCESTORS"])
if sys.argv[2] == "running":
    print(os.getpid(), flush=True)
time.sleep(600)
"""
LAUNCH = """import subprocess, sys  # as torchrun / deepspeed's launch: the rank in a session of its own
print(subprocess.Popen([sys.executable, *sys.argv[1:]], start_new_session=True).wait(), flush=True)
"""
RUNNER = """import subprocess, sys  # as deepspeed's single-node runner: starts `launch`, passes no signal on
subprocess.Popen([sys.executable, *sys.argv[1:]]).wait()
"""


@pytest.mark.parametrize("when", ["running", "starting"])
@pytest.mark.parametrize("killed", ["launcher", "runner"])
def test_ranks_stop_with_their_launchers(tmp_path, killed, when):
    """A rank under a launcher (run as torchrun / deepspeed's `launch` do: in its own session) under DeepSpeed's
    runner: SIGKILL to the launcher, or to the runner alone (which passes nothing on), stops the rank (exit 75),
    also when it came while the rank was still importing, before it installed its handlers (then
    `preempt.install` sees, from what launchers/_preamble.py recorded first thing, that a launcher is gone)."""
    for name, code in (("rank.py", RANK), ("launch.py", LAUNCH), ("deepspeed", RUNNER)):
        (tmp_path / name).write_text(code)
    go = tmp_path / "go"
    cmd = [sys.executable, str(tmp_path / "deepspeed"), str(tmp_path / "launch.py"), str(tmp_path / "rank.py"),
           str(ROOT / "launchers" / "_preamble.py"), when, str(go)]
    env = {**os.environ, **LAUNCH_ENV, "PYTHONPATH": str(ROOT), "LOCAL_RANK": "0", "RANK": "0"}
    runner = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    pid = int(runner.stdout.readline())
    launch = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    os.kill(launch if killed == "launcher" else runner.pid, signal.SIGKILL)
    if killed == "runner":
        runner.wait()
    go.touch()
    deadline = time.time() + 60
    while os.path.exists(f"/proc/{pid}") and "State:\tZ" not in open(f"/proc/{pid}/status").read():
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"rank {pid} outlived its {killed}")
        time.sleep(0.1)
    if killed == "runner":  # `launch` lived on and reports the rank's exit
        assert runner.stdout.read().split() == ["75"]
    else:
        runner.wait()


@pytest.mark.slow
def test_faults_benchmark_quick(tmp_path):
    """`benchmarks/faults.py --quick`: a kill -9 of pretrain.py aimed at a checkpoint save resumes
    bit-identically with no orphaned rank; a SIGTERM to torchrun at a random step loses no step, leaves a
    sound checkpoint, says so in one line and resumes bit-identically; the planted bad inputs are refused
    with one line before training, /dev/shm stays clean."""
    out = tmp_path / "faults.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, env={**os.environ, **LAUNCH_ENV}, cwd=ROOT, timeout=HANG_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    res = json.loads(out.read_text())
    s, trial = res["summary"], res["kill"]["pretrain.py"]["trials"][0]
    assert "save" in trial["kill"]  # aimed at a save: landed inside it in 7 of 11 full-run trials
    assert s["kill_trials"] >= 1 and s["kill_trials_not_identical"] == 0 and s["orphans"] == 0
    assert s["bad_inputs"] >= 10 and s["bad_inputs_not_refused"] == [] and s["shm_leftovers"] == []
    [signalled] = res["signals"]["pretrain.py"]["trials"]
    assert signalled["signal"] == "SIGTERM" and signalled["stopped"] in ("training", "finished")
    assert s["signal_trials"] == 1 and s["signal_steps_lost"] == 0 and s["signal_corrupt"] == 0
    assert s["signal_trials_not_identical"] == 0 and s["signal_without_one_line"] == 0
