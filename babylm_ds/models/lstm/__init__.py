from .configuration import BabyLSTMConfig
from .modeling import BabyLSTMCache, BabyLSTMForCausalLM, BabyLSTMForSequenceClassification, BabyLSTMModel

__all__ = ["BabyLSTMCache", "BabyLSTMConfig", "BabyLSTMForCausalLM", "BabyLSTMForSequenceClassification",
           "BabyLSTMModel"]
