"""BabyHGRN: HGRN2 causal LM as a transformers `PreTrainedModel` (module tree and parameter names = fla's
`HGRN2ForCausalLM`), with a recurrent-state cache so `generate()` costs O(1) memory per token."""
import torch
import torch.nn as nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, LinearAttentionLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from babylm_ds.layers import HGRN2Attention, SwiGLU
from babylm_ds.models.babyhgrn.configuration import BabyHGRNConfig


class HGRN2Cache(Cache):
    """One fp32 recurrent state [B, H, K, V] per layer plus the number of tokens consumed."""

    is_compileable = False

    def __init__(self, num_layers: int):
        super().__init__(layers=[LinearAttentionLayer() for _ in range(num_layers)])
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_state(self, layer_idx: int):
        layer = self.layers[layer_idx]
        return layer.recurrent_states[0] if layer.is_recurrent_states_initialized[0] else None

    def set_state(self, layer_idx: int, state: torch.Tensor):
        self.layers[layer_idx].update_recurrent_state(state)

    def reset(self):
        super().reset()
        self.seen_tokens = 0


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


class BabyHGRNPreTrainedModel(PreTrainedModel):
    config_class = BabyHGRNConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BabyHGRNBlock"]
    _is_stateful = True
    _input_embed_layer = "embeddings"

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BabyHGRNModel):
            init.zeros_(module.lower_bounds)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model creates its own HGRN2Cache on the first forward with use_cache


class BabyHGRNModel(BabyHGRNPreTrainedModel):
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

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_key_values=None,
                use_cache=None, output_hidden_states=None, **kwargs):
        """`attention_mask` [B, T_past + T] (1 = token, 0 = padding); padded tokens do not touch the recurrent
        state (left or right padding both give the unpadded results on real tokens), their outputs are
        meaningless. Returns `past_key_values` (an HGRN2Cache) when `use_cache`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        use_cache = self.config.use_cache and not self.training if use_cache is None else use_cache
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if use_cache and past_key_values is None:
            past_key_values = HGRN2Cache(self.config.num_hidden_layers)
        if past_key_values is not None and not isinstance(past_key_values, HGRN2Cache):
            raise TypeError(f"past_key_values must be an HGRN2Cache, got {type(past_key_values).__name__}")
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(f"attention_mask must be a 2D [batch, seq] padding mask, got {attention_mask.dim()}D")
            attention_mask = attention_mask[:, -T:]

        gamma = self.forget_lower_bounds()
        hidden_states = () if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden_states += (x,)
            state = past_key_values.get_state(i) if past_key_values is not None else None
            x, state = layer(x, gamma[i] if i else None, attention_mask, state,
                             use_cache=use_cache, backend=self.config.backend)
            if use_cache:
                past_key_values.set_state(i, state)
        if use_cache:
            past_key_values.seen_tokens += T
        x = self.norm(x)
        if output_hidden_states:
            hidden_states += (x,)
        return BaseModelOutputWithPast(last_hidden_state=x, past_key_values=past_key_values if use_cache else None,
                                       hidden_states=hidden_states)


class BabyHGRNForCausalLM(BabyHGRNPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: BabyHGRNConfig):
        super().__init__(config)
        self.model = BabyHGRNModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_key_values=None, labels=None,
                use_cache=None, output_hidden_states=None, logits_to_keep=0, **kwargs):
        """HF causal LM forward: `labels` are shifted inside (-100 ignored); `logits_to_keep` > 0 keeps the
        last positions only."""
        out = self.model(input_ids, attention_mask, inputs_embeds, past_key_values, use_cache, output_hidden_states)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(out.last_hidden_state[:, keep])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states)
