"""The zoo's LSTM (BabyLSTM) and Mamba families, and its matched-parameter preset groups."""
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, MambaConfig, MambaForCausalLM

from babylm_ds.models import PRESETS, BabyLSTMCache, build_model, count_parameters
from launch import LAUNCH_ENV, ROOT, read_metrics

VOCAB = 97
FAMILIES = ("babyhgrn", "llama", "gpt2", "mamba", "lstm")


def _lstm(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, eos_token_id=None)
    return build_model("lstm-tiny", vocab_size=VOCAB, **{**cfg, **kw}).eval()


def _ids(b=2, t=13, seed=1):
    return torch.randint(3, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def _reference_lstm(lstm, x):
    """LSTM with projection written from its equations (Hochreiter & Schmidhuber; Sak et al. 2014), float64."""
    w_ih, w_hh, b = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0
    w_hr = getattr(lstm, "weight_hr_l0", None)
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    c = x.new_zeros(x.shape[0], w_hh.shape[0] // 4)
    out = []
    for t in range(x.shape[1]):
        i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        h = h @ w_hr.T if w_hr is not None else h
        out.append(h)
    return torch.stack(out, 1)


@pytest.mark.parametrize("cell", [32, 48])
def test_lstm_matches_reference_equations(cell):
    model = _lstm(intermediate_size=cell).double()
    ids = _ids()
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, use_cache=False)
        x = model.model.embeddings(ids)
        for lstm in model.model.layers:
            x = _reference_lstm(lstm, x)
        ref = model.model.norm(x)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[-1], ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.logits, model.lm_head(ref), rtol=1e-10, atol=1e-10)


def test_lstm_cache_and_generate_equal_full_recomputation():
    model, x = _lstm(), _ids(t=9)
    with torch.no_grad():
        full = model(x, use_cache=True)
        cache, steps = BabyLSTMCache(2), []
        for t in range(x.shape[1]):
            steps.append(model(x[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
        cached = model.generate(x, max_new_tokens=12, do_sample=False)
        uncached = model.generate(x, max_new_tokens=12, do_sample=False, use_cache=False)
        beams = [model.generate(x, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=c) for c in (True, False)]
        seq = x
        for _ in range(12):
            seq = torch.cat([seq, model(seq, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    torch.testing.assert_close(torch.cat(steps, 1), full.logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(*beams)  # beam search reorders the cached states
    assert cache.get_seq_length() == 9
    h, c = cache.get_state(1)
    assert h.shape == (1, 2, 32) and c.shape == (1, 2, 48)
    assert torch.equal(cached, seq) and torch.equal(uncached, seq)


def test_lstm_padding_is_ignored():
    model, x = _lstm(), _ids(b=1, t=11)
    pad, fill = torch.zeros(1, 4, dtype=torch.long), _ids(b=1, t=4, seed=9)
    ones = torch.ones_like(x)
    with torch.no_grad():
        ref = model(x).logits
        left = model(torch.cat([fill, x], 1), attention_mask=torch.cat([pad, ones], 1)).logits
        right = model(torch.cat([x, fill], 1), attention_mask=torch.cat([ones, pad], 1), use_cache=True)
        unmasked = model(torch.cat([fill, x], 1)).logits
        y = _ids(b=1, t=7, seed=5)
        batch = torch.cat([torch.cat([pad, y], 1), x], 0)
        mask = torch.cat([torch.cat([pad, torch.ones_like(y)], 1), ones], 0)
        gen = model.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        solo = model.generate(y, max_new_tokens=5, do_sample=False)
        ref_cache = model(x, use_cache=True).past_key_values
    torch.testing.assert_close(left[:, 4:], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(right.logits[:, :11], ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(right.past_key_values.get_state(1), ref_cache.get_state(1), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the state skipped the right padding
    assert not torch.allclose(unmasked[:, 4:], ref, atol=1e-3)
    assert torch.equal(gen[0, 11:], solo[0, 7:])
    with pytest.raises(ValueError, match="intermediate_size"):
        _lstm(intermediate_size=16)


@pytest.mark.parametrize("name", ["lstm-tiny", "mamba-tiny"])
def test_preset_trains_saves_reloads_generates(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2).train()
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight
    x = _ids(b=4, t=24)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(10):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(VOCAB)) < 0.5 and losses[-1] < losses[0] - 0.5, losses
    model.eval().save_pretrained(tmp_path)
    # `import fla` (test_models' fla-compatibility tests) re-registers model type "mamba" with fla's own
    # Triton-only classes; restore transformers' ones, as in a process that never imported fla
    AutoConfig.register("mamba", MambaConfig, exist_ok=True)
    AutoModelForCausalLM.register(MambaConfig, MambaForCausalLM, exist_ok=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
        out = loaded.generate(x[:1, :5], max_new_tokens=6, do_sample=False, eos_token_id=None)
        assert torch.equal(out, model.generate(x[:1, :5], max_new_tokens=6, do_sample=False, eos_token_id=None))
    assert out.shape == (1, 11) and torch.equal(out[:, :5], x[:1, :5])


@pytest.mark.parametrize("size", ["cpu", "360m"])
def test_preset_groups_have_matched_parameter_counts(size):
    with torch.device("meta"):
        counts = {f: count_parameters(build_model(f"{f}-{size}")) for f in FAMILIES}
    assert all(PRESETS[f"{f}-{size}"]["family"] == f for f in FAMILIES)
    mean = sum(counts.values()) / len(counts)
    assert all(abs(n - mean) / mean < 0.05 for n in counts.values()), counts
    assert (3e6 <= mean <= 6e6) if size == "cpu" else abs(mean - 360e6) / 360e6 < 0.05


@pytest.mark.parametrize("name", ["lstm-cpu", "mamba-cpu"])
def test_pretrain_launcher_runs(name, tiny_data_dir, tmp_path):
    """One process through launchers/pretrain.py (DeepSpeed ZeRO-2 engine on CPU): loss falls, final/ reloads."""
    out = tmp_path / name
    cmd = [sys.executable, str(ROOT / "launchers" / "pretrain.py"), "--model", name, "--data", str(tiny_data_dir),
           "--out", str(out), "--ds_config", str(ROOT / "ds_configs" / "zero2.json"), "--max-steps", "6",
           "--micro-batch", "8", "--lr", "3e-3", "--warmup-steps", "1", "--log-every", "1",
           "--model-config", "num_hidden_layers=1"]
    proc = subprocess.run(cmd, env={**os.environ, **LAUNCH_ENV}, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = list(read_metrics(out, "train/loss").values())
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.model_type == {"lstm-cpu": "babylstm", "mamba-cpu": "mamba"}[name]


def test_fla_backend_keeps_transformers_mamba():
    """Our fla backend imports fla, which registers its own classes under transformers' "mamba": a Mamba
    checkpoint must still load as transformers' model (fresh process: import state is global)."""
    pytest.importorskip("fla")
    code = ("import babylm_ds; from babylm_ds.ops.hgrn2.fla import import_fla_ops; import_fla_ops(); "
            "from transformers import AutoConfig, MambaConfig; "
            "assert type(AutoConfig.for_model('mamba')) is MambaConfig, type(AutoConfig.for_model('mamba')); "
            "assert type(AutoConfig.for_model('gla')).__module__.startswith('fla.')")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
