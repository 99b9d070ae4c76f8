"""Model zoo; importing this package registers BabyHGRN and BabyLSTM with the transformers Auto classes."""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from babylm_ds.models.babyhgrn import BabyHGRNConfig, BabyHGRNForCausalLM, BabyHGRNModel, HGRN2Cache
from babylm_ds.models.lstm import BabyLSTMCache, BabyLSTMConfig, BabyLSTMForCausalLM, BabyLSTMModel
from babylm_ds.models.zoo import (
    PRESETS, build_model, count_parameters, model_from_arg, parse_overrides, preset_names,
)

for config, base, lm in ((BabyHGRNConfig, BabyHGRNModel, BabyHGRNForCausalLM),
                         (BabyLSTMConfig, BabyLSTMModel, BabyLSTMForCausalLM)):
    AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(config, base, exist_ok=True)
    AutoModelForCausalLM.register(config, lm, exist_ok=True)

__all__ = ["BabyHGRNConfig", "BabyHGRNForCausalLM", "BabyHGRNModel", "HGRN2Cache",
           "BabyLSTMCache", "BabyLSTMConfig", "BabyLSTMForCausalLM", "BabyLSTMModel",
           "PRESETS", "build_model", "count_parameters", "model_from_arg", "parse_overrides", "preset_names"]
