from babylm_ds.models.babyhgrn.configuration import BabyHGRNConfig
from babylm_ds.models.babyhgrn.modeling import (
    BabyHGRNForCausalLM,
    BabyHGRNForSequenceClassification,
    BabyHGRNModel,
    HGRN2Cache,
)

__all__ = ["BabyHGRNConfig", "BabyHGRNForCausalLM", "BabyHGRNForSequenceClassification", "BabyHGRNModel", "HGRN2Cache"]
