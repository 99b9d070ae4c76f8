from .configuration import BabyLSTMConfig
from .modeling import BabyLSTMCache, BabyLSTMForCausalLM, BabyLSTMModel

__all__ = ["BabyLSTMCache", "BabyLSTMConfig", "BabyLSTMForCausalLM", "BabyLSTMModel"]
