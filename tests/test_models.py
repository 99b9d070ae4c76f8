"""BabyHGRN (HF-native HGRN2 LM) and the model zoo."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from babylm_ds.models import (  # noqa: E402
    PRESETS,
    BabyHGRNConfig,
    BabyHGRNForCausalLM,
    HGRN2Cache,
    build_model,
    count_parameters,
    preset_names,
)
from babylm_ds.ops import naive_hgrn2  # noqa: E402

VOCAB = 97


def _model(seed=0, **kw):
    """Small BabyHGRN with non-trivial lower bounds and norms (the default init makes them uniform / ones)."""
    torch.manual_seed(seed)
    cfg = dict(hidden_size=64, num_hidden_layers=3, expand_ratio=16, intermediate_size=96, vocab_size=VOCAB)
    model = BabyHGRNForCausalLM(BabyHGRNConfig(**{**cfg, **kw})).eval()
    with torch.no_grad():
        model.model.lower_bounds.normal_()
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _ids(b=2, t=23, seed=1):
    return torch.randint(3, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def _reference_layer(attn, x, gamma):
    """Per-token HGRN2 recurrence written from the paper's equations (independent of the ops package)."""
    B, T, d = x.shape
    H, K = attn.num_heads, attn.head_dim
    q = F.silu(x @ attn.q_proj.weight.T).view(B, T, H, K)
    forget = gamma + (1 - gamma) * torch.sigmoid(x @ attn.f_proj.weight.T)
    forget = forget.view(B, T, H, K)
    v = (x @ attn.i_proj.weight.T).view(B, T, H, K)
    S, out = torch.zeros(B, H, K, K, dtype=torch.float64), []
    for t in range(T):
        S = forget[:, t, :, :, None] * S + (1 - forget[:, t, :, :, None]) * v[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) * K ** -0.5)
    o = torch.stack(out, 1).reshape(B, T, d)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + attn.g_norm.eps) * attn.g_norm.weight
    return o @ attn.o_proj.weight.T


def test_layer_matches_paper_recurrence():
    model = _model().double()
    attn = model.model.layers[1].attn
    gamma = model.model.forget_lower_bounds()[1].double()
    x = torch.randn(2, 19, 64, dtype=torch.float64)
    with torch.no_grad():
        o, _ = attn(x, gamma)
        torch.testing.assert_close(o, _reference_layer(attn, x, gamma), rtol=1e-9, atol=1e-9)


def test_chunked_forward_equals_token_by_token_cache():
    model, x = _model(), _ids()
    with torch.no_grad():
        full = model(x, use_cache=True, output_hidden_states=True)
        cache, steps = HGRN2Cache(model.config.num_hidden_layers), []
        for t in range(x.shape[1]):
            steps.append(model(x[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full.logits, rtol=1e-4, atol=1e-5)
    assert cache.get_seq_length() == x.shape[1]
    assert len(full.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, x.shape[1], 64) for h in full.hidden_states)
    for i in range(model.config.num_hidden_layers):
        state = cache.get_state(i)
        assert state.shape == (2, 4, 16, 16) and state.dtype == torch.float32
        torch.testing.assert_close(state, full.past_key_values.get_state(i), rtol=1e-4, atol=1e-5)


def test_generate_with_cache_equals_full_forward_loop():
    model, x = _model(), _ids(t=9)
    with torch.no_grad():
        cached = model.generate(x, max_new_tokens=12, do_sample=False)
        uncached = model.generate(x, max_new_tokens=12, do_sample=False, use_cache=False)
        seq = x
        for _ in range(12):
            seq = torch.cat([seq, model(seq, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(cached, seq) and torch.equal(uncached, seq)


def test_attention_mask_padding_is_ignored():
    model, x = _model(), _ids(b=1, t=11)
    pad, fill = torch.zeros(1, 4, dtype=torch.long), _ids(b=1, t=4, seed=9)  # masked positions may hold any id
    with torch.no_grad():
        ref = model(x, use_cache=True)
        left = model(torch.cat([fill, x], 1), attention_mask=torch.cat([pad, torch.ones_like(x)], 1), use_cache=True)
        right = model(torch.cat([x, fill], 1), attention_mask=torch.cat([torch.ones_like(x), pad], 1), use_cache=True)
        unmasked = model(torch.cat([fill, x], 1))
        # batched left-padded generation gives each row's unpadded continuation
        y = _ids(b=1, t=7, seed=5)
        batch = torch.cat([torch.cat([pad, y], 1), x[:, :11]], 0)
        mask = torch.cat([torch.cat([pad, torch.ones_like(y)], 1), torch.ones(1, 11, dtype=torch.long)], 0)
        gen = model.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        solo = model.generate(y, max_new_tokens=5, do_sample=False)
    torch.testing.assert_close(left.logits[:, 4:], ref.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(right.logits[:, :11], ref.logits, rtol=1e-4, atol=1e-5)
    for i in range(model.config.num_hidden_layers):
        for out in (left, right):
            torch.testing.assert_close(out.past_key_values.get_state(i), ref.past_key_values.get_state(i))
    assert not torch.allclose(unmasked.logits[:, 4:], ref.logits, atol=1e-3)  # the mask does something
    assert torch.equal(gen[0, 11:], solo[0, 7:])
    with pytest.raises(ValueError, match="2D"):
        model(x, attention_mask=torch.ones(1, 1, 11, 11))


def test_lower_bounds_and_gradient():
    model = _model()
    gamma = model.model.forget_lower_bounds()
    assert torch.all(gamma[0] == 0)
    assert torch.all(gamma[1:] > gamma[:-1]) and torch.all(gamma < 1)
    # the bound holds: with f -> -inf the forget gate exp(g) equals γ
    attn, x = model.model.layers[2].attn, torch.randn(1, 3, 64)
    with torch.no_grad():
        attn.f_proj.weight.copy_(-1e4 * torch.eye(64))
        h = attn.f_proj(x.abs() + 1)
        g = torch.logaddexp(gamma[2].log(), torch.log1p(-gamma[2]) + F.logsigmoid(h))
        torch.testing.assert_close(g.exp(), gamma[2].expand_as(g))
        attn.f_proj.weight.copy_(1e4 * torch.eye(64))  # σ(f) = 1: log g rounds above 0 unless clamped
        assert torch.isfinite(attn(x.abs() + 1, gamma[2])[0]).all()
    model = _model().train()
    model.gradient_checkpointing_enable()  # the name transformers 5.17 (the GPU machine) knows too
    x = _ids()
    out = model(x, labels=x)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)
    out.loss.backward()
    grad = model.model.lower_bounds.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_save_load_roundtrip_auto(tmp_path):
    model, x = _model(), _ids()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "babyhgrn"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, BabyHGRNForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


def test_fla_state_dict_compatible():
    fla_models = pytest.importorskip("fla.models")
    kw = dict(hidden_size=64, num_hidden_layers=3, expand_ratio=16, vocab_size=VOCAB)
    ours = _model(intermediate_size=None)  # default width: int(d * 4 * 2/3) rounded up to 256, as fla
    fla = fla_models.HGRN2ForCausalLM(fla_models.HGRN2Config(**kw, fuse_norm=False, fuse_swiglu=False,
                                                              fuse_cross_entropy=False))
    ours_sd, fla_sd = ours.state_dict(), fla.state_dict()
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in fla_sd.items()}
    fla.load_state_dict(ours_sd)
    ours.load_state_dict(fla_sd)
    assert all(torch.equal(v, fla.state_dict()[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("name", [n for n in preset_names() if not n.endswith(("-tiny", "-cpu"))])
def test_preset_parameter_counts_match_names(name):
    with torch.device("meta"):
        model = build_model(name)
    size = name.rsplit("-", 1)[1]
    target = float(size[:-1]) * {"m": 1e6, "b": 1e9}[size[-1]]
    assert abs(count_parameters(model) - target) / target < 0.05


def test_tiny_presets_build_and_train_step():
    for name in ("llama-tiny", "gpt2-tiny", "babyhgrn-tiny"):
        model = build_model(name)
        assert 1e6 <= count_parameters(model) <= 5e6
        cfg = model.config
        assert (cfg.vocab_size, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (16000, 0, 1, 2)
        x = torch.randint(0, 16000, (2, 16))
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(16000.0)).item()) < 1.0
    assert build_model("llama-tiny", vocab_size=500, num_hidden_layers=2).config.num_hidden_layers == 2
    assert all(PRESETS[n]["family"] in ("llama", "gpt2", "babyhgrn", "mamba", "lstm") for n in preset_names())
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("llama-7b")
    with pytest.raises(ValueError, match="expand_ratio"):
        BabyHGRNConfig(hidden_size=100, expand_ratio=32)


def test_logits_match_fla_module_tree(monkeypatch):
    """fla's HGRN2 model code on CPU, its Triton-only primitives replaced by plain torch with the same
    signatures and defaults (its fused rms_norm_linear defaults to eps 1e-5) and its GLA kernels by
    the naive oracle: logits equal ours, also past one 64-token chunk."""
    fla_models = pytest.importorskip("fla.models")
    import fla.layers.hgrn2 as fla_layer
    import fla.modules.mlp as fla_mlp

    def rms_norm_linear(x, norm_weight, norm_bias, linear_weight, linear_bias, residual=None, eps=1e-5, **kw):
        return F.linear(norm_weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps), linear_weight)

    def gla(q, k, v, g=None, gk=None, initial_state=None, output_final_state=False, **kw):
        o, s = naive_hgrn2(q, k, v, g if g is not None else gk, q.shape[-1] ** -0.5, initial_state,
                           output_final_state)
        return o.to(q.dtype), s

    for name, fn in (("swish", F.silu), ("rms_norm_linear", rms_norm_linear), ("chunk_gla", gla),
                     ("fused_recurrent_gla", gla)):
        monkeypatch.setattr(fla_layer, name, fn)
    monkeypatch.setattr(fla_mlp, "swiglu", lambda a, b: F.silu(a) * b)
    kw = dict(hidden_size=128, num_hidden_layers=3, expand_ratio=32, vocab_size=VOCAB)
    ours = _model(intermediate_size=None, **kw)
    fla = fla_models.HGRN2ForCausalLM(fla_models.HGRN2Config(**kw, fuse_norm=False, fuse_swiglu=False,
                                                              fuse_cross_entropy=False)).eval()
    with torch.no_grad():
        ours.lm_head.weight.normal_()
        fla.load_state_dict(ours.state_dict())
        for t in (30, 130):
            x = _ids(t=t)
            a, b = ours(x).logits, fla(x).logits
            assert (a - b).abs().max() / b.abs().max() < 1e-5


@pytest.mark.gpu
def test_logits_match_fla_on_gpu():
    """Against fla's own GPU kernels (chunk_gla uses tf32 dots: ~1e-3 relative error)."""
    fla_models = pytest.importorskip("fla.models")
    kw = dict(hidden_size=128, num_hidden_layers=3, expand_ratio=32, vocab_size=VOCAB)
    ours = _model(intermediate_size=None, **kw).cuda()
    fla = fla_models.HGRN2ForCausalLM(fla_models.HGRN2Config(**kw, fuse_norm=False, fuse_swiglu=False,
                                                              fuse_cross_entropy=False)).cuda().eval()
    with torch.no_grad():
        ours.lm_head.weight.normal_()
        fla.load_state_dict(ours.state_dict())
        x = _ids(t=130).cuda()  # > 64 tokens: fla takes its chunked path
        a, b = ours(x).logits, fla(x).logits
    assert (a - b).abs().max() / b.abs().max() < 1e-2
