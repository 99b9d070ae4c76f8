"""Model zoo and the project's own HF model families (registered with the Auto classes by `import babylm_ds`).

The zoo (`babylm_ds.models.zoo`: presets, builders) is imported on first use of its names, so that
registration does not pay for the Llama / GPT-2 / Mamba modeling imports.
"""
from babylm_ds.models.babyhgrn import (
    BabyHGRNConfig,
    BabyHGRNForCausalLM,
    BabyHGRNForSequenceClassification,
    BabyHGRNModel,
    HGRN2Cache,
)
from babylm_ds.models.lstm import (
    BabyLSTMCache,
    BabyLSTMConfig,
    BabyLSTMForCausalLM,
    BabyLSTMForSequenceClassification,
    BabyLSTMModel,
)

_ZOO = ("PRESETS", "build_model", "check_model_arg", "count_parameters", "model_from_arg", "preset_names")

__all__ = ["BabyHGRNConfig", "BabyHGRNForCausalLM", "BabyHGRNForSequenceClassification", "BabyHGRNModel",
           "HGRN2Cache", "BabyLSTMCache", "BabyLSTMConfig", "BabyLSTMForCausalLM", "BabyLSTMForSequenceClassification",
           "BabyLSTMModel", *_ZOO]


def __getattr__(name):
    if name in _ZOO:
        from babylm_ds.models import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
