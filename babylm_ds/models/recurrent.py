"""What the recurrent LM families (BabyHGRN, BabyLSTM) share: a state cache, so `generate()` feeds one token
per step, the base model's forward over a stack of recurrent layers, the causal-LM head and the
sequence-classification head on top.

Inlined into exported models (models/remote_code.py): keeps the rules in models/export_rules.py."""
import torch
import torch.nn as nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, LinearAttentionLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)


class RecurrentCache(Cache):
    """Per layer `n_states` state tensors plus the number of tokens consumed; `get_state` gives the tensor
    (n_states = 1) or the tuple, `set_state` takes the same."""

    is_compileable = False
    n_states = 1

    def __init__(self, num_layers: int):
        super().__init__(layers=[LinearAttentionLayer(number_of_states=self.n_states) for _ in range(num_layers)])
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_state(self, layer_idx: int):
        layer = self.layers[layer_idx]
        if not layer.is_recurrent_states_initialized[0]:
            return None
        states = tuple(layer.recurrent_states[i] for i in range(self.n_states))
        return states if self.n_states > 1 else states[0]

    def set_state(self, layer_idx: int, state):
        for i, s in enumerate(state if self.n_states > 1 else (state,)):
            self.layers[layer_idx].update_recurrent_state(s, state_idx=i)

    def reset(self):
        super().reset()
        self.seen_tokens = 0


class RecurrentPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
    _is_stateful = True
    _input_embed_layer = "embeddings"

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model creates its own cache on the first forward with use_cache


class RecurrentModel(RecurrentPreTrainedModel):
    """Embeddings → `layers` → `norm`. A family sets `cache_class` and `layer_fn(mask, use_cache)`, which returns
    `fn(i, layer, x, state) -> (x, state)` for this forward (mask: [B, T] or None)."""

    cache_class = RecurrentCache

    def layer_fn(self, mask, use_cache):
        raise NotImplementedError

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_key_values=None,
                use_cache=None, output_hidden_states=None, **kwargs):
        """`attention_mask` [B, T_past + T] (1 = token, 0 = padding): padded tokens leave the recurrent state
        unchanged (left or right padding give the unpadded results on real tokens; their own outputs are
        meaningless). Returns `past_key_values` (a `cache_class`) when `use_cache`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        use_cache = self.config.use_cache and not self.training if use_cache is None else use_cache
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if use_cache and past_key_values is None:
            past_key_values = self.cache_class(self.config.num_hidden_layers)
        if past_key_values is not None and not isinstance(past_key_values, self.cache_class):
            raise TypeError(f"past_key_values must be a {self.cache_class.__name__}, "
                            f"got {type(past_key_values).__name__}")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be a 2D [batch, seq] padding mask, got {attention_mask.dim()}D")

        step = self.layer_fn(attention_mask[:, -T:] if attention_mask is not None else None, use_cache)
        hidden_states = () if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden_states += (x,)
            x, state = step(i, layer, x, past_key_values.get_state(i) if past_key_values is not None else None)
            if use_cache:
                past_key_values.set_state(i, state)
        if use_cache:
            past_key_values.seen_tokens += T
        x = self.norm(x)
        if output_hidden_states:
            hidden_states += (x,)
        return BaseModelOutputWithPast(last_hidden_state=x, past_key_values=past_key_values if use_cache else None,
                                       hidden_states=hidden_states)


class RecurrentForCausalLM(RecurrentPreTrainedModel, GenerationMixin):
    """A `base_model_class` (a RecurrentModel) with an LM head tied to its embeddings."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}
    base_model_class = None

    def __init__(self, config):
        super().__init__(config)
        self.model = self.base_model_class(config)
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


class RecurrentForSequenceClassification(RecurrentPreTrainedModel):
    """A `base_model_class` (a RecurrentModel) with a linear `score` head (as transformers'
    `*ForSequenceClassification`) read at each sequence's last real token: the last position where
    `attention_mask` is 1, else the last token that is not `pad_token_id`, else the last position. Pad on the
    right: that state has read the whole text."""

    base_model_class = None

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = self.base_model_class(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, output_hidden_states=None,
                **kwargs):
        """Logits [B, num_labels]; `labels` [B] give the loss of the config's `problem_type` (cross-entropy for
        integer labels)."""
        out = self.model(input_ids, attention_mask, inputs_embeds, None, False, output_hidden_states)
        h = out.last_hidden_state
        if attention_mask is not None:
            real = attention_mask[:, -h.shape[1]:].bool()
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = input_ids != self.config.pad_token_id
        else:
            real = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        last = (torch.arange(h.shape[1], device=h.device) * real).argmax(-1)
        logits = self.score(h[torch.arange(h.shape[0], device=h.device), last])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states)
