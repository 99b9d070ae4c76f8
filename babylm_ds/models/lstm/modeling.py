"""BabyLSTM: a stacked-LSTM causal LM as a transformers `PreTrainedModel`, with an (h, c) state cache so
`generate()` feeds one token per step.

Inlined into exported models (models/remote_code.py): keeps the rules in models/export_rules.py."""
import torch
import torch.nn as nn

from babylm_ds.models.recurrent import (
    RecurrentCache,
    RecurrentForCausalLM,
    RecurrentForSequenceClassification,
    RecurrentModel,
    RecurrentPreTrainedModel,
)

from .configuration import BabyLSTMConfig


class BabyLSTMCache(RecurrentCache):
    """Per layer the LSTM state (h [1, B, hidden_size], c [1, B, intermediate_size]) plus the tokens consumed,
    stored batch first (cache layers reorder beams along dim 0)."""

    n_states = 2

    def get_state(self, layer_idx: int):
        state = super().get_state(layer_idx)
        return None if state is None else tuple(s.transpose(0, 1) for s in state)

    def set_state(self, layer_idx: int, state):
        super().set_state(layer_idx, tuple(s.transpose(0, 1) for s in state))


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


class BabyLSTMPreTrainedModel(RecurrentPreTrainedModel):
    config_class = BabyLSTMConfig


class BabyLSTMModel(RecurrentModel, BabyLSTMPreTrainedModel):
    cache_class = BabyLSTMCache

    def __init__(self, config: BabyLSTMConfig):
        super().__init__(config)
        d, cell = config.hidden_size, config.intermediate_size
        self.embeddings = nn.Embedding(config.vocab_size, d, config.pad_token_id)
        self.layers = nn.ModuleList(nn.LSTM(d, cell, batch_first=True, proj_size=d if cell > d else 0)
                                    for _ in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.post_init()

    def layer_fn(self, mask, use_cache):
        if mask is not None:
            mask = mask.bool()
            right_padded = bool((mask[:, 1:] <= mask[:, :-1]).all())  # real tokens never follow padding
            if mask.all() or (right_padded and not use_cache):
                mask = None  # padding cannot reach a real token: run the fused LSTM
        return lambda i, lstm, x, state: lstm(x, state) if mask is None else masked_lstm(lstm, x, mask, state)


class BabyLSTMForCausalLM(RecurrentForCausalLM, BabyLSTMPreTrainedModel):
    base_model_class = BabyLSTMModel


class BabyLSTMForSequenceClassification(RecurrentForSequenceClassification, BabyLSTMPreTrainedModel):
    base_model_class = BabyLSTMModel
