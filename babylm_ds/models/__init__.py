"""Model zoo; importing this package registers BabyHGRN with the transformers Auto classes."""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from babylm_ds.models.babyhgrn import BabyHGRNConfig, BabyHGRNForCausalLM, BabyHGRNModel, HGRN2Cache
from babylm_ds.models.zoo import (
    PRESETS, build_model, check_model_arg, count_parameters, model_from_arg, parse_overrides, preset_names,
)

AutoConfig.register(BabyHGRNConfig.model_type, BabyHGRNConfig, exist_ok=True)
AutoModel.register(BabyHGRNConfig, BabyHGRNModel, exist_ok=True)
AutoModelForCausalLM.register(BabyHGRNConfig, BabyHGRNForCausalLM, exist_ok=True)

__all__ = ["BabyHGRNConfig", "BabyHGRNForCausalLM", "BabyHGRNModel", "HGRN2Cache",
           "PRESETS", "build_model", "check_model_arg", "count_parameters", "model_from_arg", "parse_overrides",
           "preset_names"]
