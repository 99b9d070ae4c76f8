"""BabyHGRN: HGRN2 causal LM as a transformers `PreTrainedModel` (module tree and parameter names = fla's
`HGRN2ForCausalLM`), with a recurrent-state cache so `generate()` costs O(1) memory per token.

Inlined into exported models (models/remote_code.py): keeps the rules in models/export_rules.py."""
import torch
import torch.nn as nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from babylm_ds.layers import HGRN2Attention, SwiGLU
from babylm_ds.models.babyhgrn.configuration import BabyHGRNConfig
from babylm_ds.models.recurrent import (
    RecurrentCache,
    RecurrentForCausalLM,
    RecurrentForSequenceClassification,
    RecurrentModel,
    RecurrentPreTrainedModel,
)


class HGRN2Cache(RecurrentCache):
    """One fp32 recurrent state [B, H, K, V] per layer plus the number of tokens consumed."""


class BabyHGRNBlock(GradientCheckpointingLayer):
    def __init__(self, config: BabyHGRNConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = HGRN2Attention(config.hidden_size, config.expand_ratio)
        self.mlp_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, lower_bound=None, mask=None, state=None, use_cache=False, backend="auto"):
        h, state = self.attn(self.attn_norm(x), lower_bound, mask, state, use_cache, backend)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state


class BabyHGRNPreTrainedModel(RecurrentPreTrainedModel):
    config_class = BabyHGRNConfig
    supports_gradient_checkpointing = True
    _no_split_modules = ["BabyHGRNBlock"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BabyHGRNModel):
            init.zeros_(module.lower_bounds)


class BabyHGRNModel(RecurrentModel, BabyHGRNPreTrainedModel):
    cache_class = HGRN2Cache

    def __init__(self, config: BabyHGRNConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.lower_bounds = nn.Parameter(torch.zeros(config.num_hidden_layers, config.hidden_size))
        self.layers = nn.ModuleList(BabyHGRNBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forget_lower_bounds(self) -> torch.Tensor:
        """γ [L, d] fp32: cumulative softmax of `lower_bounds` over layers, shifted so that γ_0 = 0."""
        gamma = self.lower_bounds.softmax(0, dtype=torch.float).cumsum(0)
        return gamma - gamma[0]

    def layer_fn(self, mask, use_cache):
        gamma = self.forget_lower_bounds()
        return lambda i, layer, x, state: layer(x, gamma[i] if i else None, mask, state, use_cache=use_cache,
                                                backend=self.config.backend)


class BabyHGRNForCausalLM(RecurrentForCausalLM, BabyHGRNPreTrainedModel):
    base_model_class = BabyHGRNModel


class BabyHGRNForSequenceClassification(RecurrentForSequenceClassification, BabyHGRNPreTrainedModel):
    base_model_class = BabyHGRNModel
