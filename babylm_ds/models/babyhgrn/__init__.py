from babylm_ds.models.babyhgrn.configuration import BabyHGRNConfig
from babylm_ds.models.babyhgrn.modeling import BabyHGRNForCausalLM, BabyHGRNModel, HGRN2Cache

__all__ = ["BabyHGRNConfig", "BabyHGRNForCausalLM", "BabyHGRNModel", "HGRN2Cache"]
