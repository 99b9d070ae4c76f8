"""babylm-ds: DeepSpeed-scaled sample-efficient LM pretraining with knowledge distillation.

Importing the package registers its model families (BabyHGRN, ...) with the transformers Auto classes,
as `import fla` does, so `AutoModelForCausalLM.from_pretrained` loads their checkpoints.
"""

__version__ = "0.1.0"

from babylm_ds.models.registry import register as _register  # noqa: E402

_register()
