"""BabyLSTM: a stacked-LSTM causal LM as a transformers `PreTrainedModel`, with an (h, c) state cache so
`generate()` feeds one token per step."""
import torch
import torch.nn as nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, LinearAttentionLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration import BabyLSTMConfig


class BabyLSTMCache(Cache):
    """Per layer the LSTM state (h [1, B, hidden_size], c [1, B, intermediate_size]) plus the tokens consumed."""

    is_compileable = False

    def __init__(self, num_layers: int):
        super().__init__(layers=[LinearAttentionLayer(number_of_states=2) for _ in range(num_layers)])
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_state(self, layer_idx: int):
        layer = self.layers[layer_idx]
        return (layer.recurrent_states[0], layer.recurrent_states[1]) if layer.is_recurrent_states_initialized[0] \
            else None

    def set_state(self, layer_idx: int, state):
        for i, s in enumerate(state):
            self.layers[layer_idx].update_recurrent_state(s, state_idx=i)

    def reset(self):
        super().reset()
        self.seen_tokens = 0


def masked_lstm(lstm: nn.LSTM, x, mask, state=None):
    """`lstm` over x [B, T, d] one step at a time; where mask [B, T] is False the state is carried unchanged."""
    B = x.shape[0]
    if state is None:
        state = (x.new_zeros(1, B, lstm.proj_size or lstm.hidden_size), x.new_zeros(1, B, lstm.hidden_size))
    outs = []
    for t in range(x.shape[1]):
        out, (h, c) = lstm(x[:, t:t + 1], state)
        keep = mask[None, :, t, None]
        state = (torch.where(keep, h, state[0]), torch.where(keep, c, state[1]))
        outs.append(out)
    return torch.cat(outs, 1), state


class BabyLSTMPreTrainedModel(PreTrainedModel):
    config_class = BabyLSTMConfig
    base_model_prefix = "model"
    _is_stateful = True
    _input_embed_layer = "embeddings"

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model creates its own BabyLSTMCache on the first forward with use_cache


class BabyLSTMModel(BabyLSTMPreTrainedModel):
    def __init__(self, config: BabyLSTMConfig):
        super().__init__(config)
        d, cell = config.hidden_size, config.intermediate_size
        self.embeddings = nn.Embedding(config.vocab_size, d, config.pad_token_id)
        self.layers = nn.ModuleList(nn.LSTM(d, cell, batch_first=True, proj_size=d if cell > d else 0)
                                    for _ in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_key_values=None,
                use_cache=None, output_hidden_states=None, **kwargs):
        """`attention_mask` [B, T_past + T] (1 = token, 0 = padding): padded tokens leave the state unchanged (left
        or right padding give the unpadded results on real tokens; their own outputs are meaningless). Returns
        `past_key_values` (a BabyLSTMCache) when `use_cache`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        use_cache = self.config.use_cache and not self.training if use_cache is None else use_cache
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if use_cache and past_key_values is None:
            past_key_values = BabyLSTMCache(self.config.num_hidden_layers)
        if past_key_values is not None and not isinstance(past_key_values, BabyLSTMCache):
            raise TypeError(f"past_key_values must be a BabyLSTMCache, got {type(past_key_values).__name__}")
        mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(f"attention_mask must be a 2D [batch, seq] padding mask, got {attention_mask.dim()}D")
            mask = attention_mask[:, -T:].bool()
            right_padded = bool((mask[:, 1:] <= mask[:, :-1]).all())  # real tokens never follow padding
            if mask.all() or (right_padded and not use_cache):
                mask = None  # padding cannot reach a real token: run the fused LSTM

        hidden_states = () if output_hidden_states else None
        for i, lstm in enumerate(self.layers):
            if output_hidden_states:
                hidden_states += (x,)
            state = past_key_values.get_state(i) if past_key_values is not None else None
            x, state = lstm(x, state) if mask is None else masked_lstm(lstm, x, mask, state)
            if use_cache:
                past_key_values.set_state(i, state)
        if use_cache:
            past_key_values.seen_tokens += T
        x = self.norm(x)
        if output_hidden_states:
            hidden_states += (x,)
        return BaseModelOutputWithPast(last_hidden_state=x, past_key_values=past_key_values if use_cache else None,
                                       hidden_states=hidden_states)


class BabyLSTMForCausalLM(BabyLSTMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: BabyLSTMConfig):
        super().__init__(config)
        self.model = BabyLSTMModel(config)
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
