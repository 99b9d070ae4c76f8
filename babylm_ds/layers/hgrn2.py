"""HGRN2 token mixer ("HGRN2: Gated Linear RNNs with State Expansion", Qin et al. 2024) and SwiGLU MLP.

Parameter names follow fla's `HGRN2Attention` / `GatedMLP`, so state dicts load both ways.

Inlined into exported models (models/remote_code.py): keeps the rules in models/export_rules.py.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from babylm_ds.ops import hgrn2, hgrn2_step


class HGRN2Attention(nn.Module):
    """q = SiLU(x Wq); log g = log(γ + (1-γ) σ(x Wf)); k = 1 - exp(g); v = x Wi;
    S_t = diag(exp g_t) S_{t-1} + k_t^T v_t per head; o = Wo RMSNorm(q_t S_t).

    Heads H = d / expand_ratio with K = V = expand_ratio; γ ∈ [0, 1) is the layer's forget-gate lower bound.
    The output norm's eps is 1e-5 whatever the config's norm_eps: fla applies it through its fused
    `rms_norm_linear`, which takes its own default eps, so fla checkpoints were trained with 1e-5.
    """

    def __init__(self, hidden_size: int, expand_ratio: int = 128, norm_eps: float = 1e-5):
        super().__init__()
        if hidden_size % expand_ratio:
            raise ValueError(f"hidden_size {hidden_size} must be a multiple of expand_ratio {expand_ratio}")
        self.num_heads = hidden_size // expand_ratio
        self.head_dim = expand_ratio
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.f_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.i_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.g_norm = nn.RMSNorm(hidden_size, eps=norm_eps)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x, lower_bound=None, mask=None, state=None, use_cache=False, backend="auto"):
        """x [B, T, d]; lower_bound γ [d] (None: γ = 0); mask [B, T] (0 = padding: k = 0 and g = 0, so a padded
        token leaves the state unchanged); state [B, H, K, V] fp32 from the previous call.

        Returns (o [B, T, d], final state or None). T == 1 with a state takes the O(1) recurrent step.
        """
        B, T, _ = x.shape
        q = F.silu(self.q_proj(x))
        g = F.logsigmoid(self.f_proj(x))
        if lower_bound is not None:
            # log(γ + (1-γ) σ(f)); rounding can push it above 0 when σ(f) ≈ 1
            g = torch.logaddexp(lower_bound.log(), torch.log1p(-lower_bound) + g).clamp(max=0)
        k = -torch.expm1(g)
        if mask is not None:
            m = mask[..., None].to(g.dtype)
            k, g = k * m, g * m
        q, k, g, v = (t.to(x.dtype).view(B, T, self.num_heads, -1) for t in (q, k, g, self.i_proj(x)))
        if T == 1 and state is not None:
            o, state = hgrn2_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], state)
            o = o[:, None]
        else:
            o, state = hgrn2(q, k, v, g, initial_state=state, output_final_state=use_cache, backend=backend)
        return self.o_proj(self.g_norm(o.reshape(B, T, -1))), state


class SwiGLU(nn.Module):
    """down(SiLU(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
