"""babylm-ds: DeepSpeed-scaled sample-efficient LM pretraining with knowledge distillation."""

__version__ = "0.1.0"
