"""transformers 4.46 – 5.x for exported model code: the names our model families import from transformers
that 4.x lacks, each transformers' own where it exists and a small stand-in where it does not.

The project's modules import these names from transformers (5.x) directly; `remote_code` inlines this
module into an export and serves those imports from it (`__all__` lists what it serves), so the
exported files also load in 4.x environments such as the BabyLM evaluation pipeline's (4.51.3).
Exported code that needs another name 4.x lacks: import it from transformers as usual, add it to
`__all__` and give it a `try: ... except ImportError:` stand-in here. Inlined, it keeps the rules
of `models/export_rules.py`.
"""
import functools
import inspect
import typing

import torch.nn as nn
import transformers

__all__ = ["Cache", "GradientCheckpointingLayer", "LinearAttentionLayer", "PreTrainedConfig", "PreTrainedModel",
           "initialization"]

try:
    from transformers import PreTrainedConfig, PreTrainedModel
except ImportError:  # transformers 4.x: configs take their fields in __init__, models lack 5.x's defaults

    class PreTrainedConfig(transformers.PretrainedConfig):
        """5.x's dataclass-style config on 4.x: a subclass's annotated class attributes are its fields, set
        from the keyword arguments (else their defaults) before `__post_init__(**other_kwargs)` runs; this
        class's `__post_init__` hands every field and the other kwargs to 4.x's `PretrainedConfig.__init__`."""

        def _fields(self):
            fields = {}
            for klass in reversed(type(self).__mro__[:type(self).__mro__.index(PreTrainedConfig)]):
                fields.update({name: getattr(klass, name) for name, annotation in inspect.get_annotations(klass).items()
                               if typing.get_origin(annotation) is not typing.ClassVar})
            return fields

        def __init__(self, **kwargs):
            for name, default in self._fields().items():
                setattr(self, name, kwargs.pop(name, default))
            self.__post_init__(**kwargs)

        def __post_init__(self, **kwargs):
            transformers.PretrainedConfig.__init__(self, **{name: getattr(self, name) for name in self._fields()},
                                                   **kwargs)

    class PreTrainedModel(transformers.PreTrainedModel):
        """4.x's PreTrainedModel with the 5.x defaults our families rely on: a cache-class model, embeddings
        found through `_input_embed_layer` (so tied heads tie), `lm_head` as output embeddings, and 5.x's
        generic `_init_weights` (what new heads and `from_config` get)."""

        _supports_cache_class = True
        _input_embed_layer = "embed_tokens"

        def get_input_embeddings(self):
            base = getattr(self, self.base_model_prefix, self)
            return getattr(base, self._input_embed_layer) if base is self else base.get_input_embeddings()

        def set_input_embeddings(self, value):
            base = getattr(self, self.base_model_prefix, self)
            setattr(base, self._input_embed_layer, value) if base is self else base.set_input_embeddings(value)

        def get_output_embeddings(self):
            return getattr(self, "lm_head", None)

        def _init_weights(self, module):
            std = getattr(self.config, "initializer_range", 0.02)
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    nn.init.zeros_(module.weight[module.padding_idx])
            elif isinstance(module, nn.LSTM):
                for name, param in module.named_parameters():
                    (nn.init.xavier_uniform_ if "weight" in name else nn.init.zeros_)(param)
            elif "Norm" in type(module).__name__ and getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

try:
    from transformers import initialization
except ImportError:  # 4.x: torch's init functions (which 4.x's from_pretrained skips for loaded weights)
    initialization = nn.init

try:
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # < 4.52

    class GradientCheckpointingLayer(nn.Module):
        """A block that `gradient_checkpointing_enable()` checkpoints (4.x sets the two attributes it reads), as
        5.x's: keyword arguments bound outside the checkpoint, no cache updates (a recompute would repeat them)."""

        gradient_checkpointing = False

        def __call__(self, *args, **kwargs):
            if self.gradient_checkpointing and self.training:
                kwargs = {**kwargs, "use_cache": False} if kwargs.get("use_cache") else kwargs
                return self._gradient_checkpointing_func(functools.partial(super().__call__, **kwargs), *args)
            return super().__call__(*args, **kwargs)

try:
    from transformers.cache_utils import Cache, LinearAttentionLayer
except ImportError:  # no linear-attention cache layers: a plain cache object, which generate() hands back to forward

    class LinearAttentionLayer:
        """The recurrent states of one layer, as 5.x's `LinearAttentionLayer` keeps them (no conv states)."""

        def __init__(self, number_of_states=1):
            self.number_of_states = number_of_states
            self.reset()

        def update_recurrent_state(self, recurrent_states, state_idx=0, **kwargs):
            self.recurrent_states[state_idx] = recurrent_states
            self.is_recurrent_states_initialized[state_idx] = True
            return recurrent_states

        def reset(self):
            self.recurrent_states = dict.fromkeys(range(self.number_of_states))
            self.is_recurrent_states_initialized = dict.fromkeys(range(self.number_of_states), False)

        def reorder_cache(self, beam_idx):
            for i, state in self.recurrent_states.items():
                if state is not None:
                    self.recurrent_states[i] = state.index_select(0, beam_idx.to(state.device))

    class Cache:
        """A list of cache layers (5.x's `Cache(layers=...)`), reset and reordered (beam search) per layer."""

        def __init__(self, layers):
            self.layers = layers

        def reset(self):
            for layer in self.layers:
                layer.reset()

        def reorder_cache(self, beam_idx):
            for layer in self.layers:
                layer.reorder_cache(beam_idx)
