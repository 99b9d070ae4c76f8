"""The project's own HF model families and their registration with the transformers Auto classes.

A family is a package `babylm_ds/models/<family>/` with `configuration.py` (one `PreTrainedConfig`
subclass with a `model_type`) and `modeling.py` (its `PreTrainedModel` classes): the class that is a
`GenerationMixin` is the `AutoModelForCausalLM`, a class named `*ForSequenceClassification` the
`AutoModelForSequenceClassification`, a class named `*Model` (not `*PreTrainedModel`) the `AutoModel`.
`register()` runs on `import babylm_ds`; the same discovery drives the self-contained export
(`babylm_ds.models.remote_code`).
"""
import importlib
import inspect
import os
import pkgutil
from dataclasses import dataclass

_PACKAGE = "babylm_ds.models"
_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Family:
    name: str
    config_class: type
    auto_classes: dict  # Auto class name -> model class


def _defined_in(module, base):
    return [obj for obj in vars(module).values()
            if inspect.isclass(obj) and obj.__module__ == module.__name__ and issubclass(obj, base) and obj is not base]


def load_family(name):
    """The `Family` of package `babylm_ds.models.<name>` (imports its configuration and modeling)."""
    from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel

    configuration = importlib.import_module(f"{_PACKAGE}.{name}.configuration")
    modeling = importlib.import_module(f"{_PACKAGE}.{name}.modeling")
    configs = [c for c in _defined_in(configuration, PreTrainedConfig) if c.model_type]
    if len(configs) != 1:
        raise ValueError(f"{configuration.__name__} must define exactly one PreTrainedConfig with a model_type, "
                         f"found {[c.__name__ for c in configs]}")
    auto = {}
    for cls in _defined_in(modeling, PreTrainedModel):
        if issubclass(cls, GenerationMixin):
            auto["AutoModelForCausalLM"] = cls
        elif cls.__name__.endswith("ForSequenceClassification"):
            auto["AutoModelForSequenceClassification"] = cls
        elif cls.__name__.endswith("Model") and not cls.__name__.endswith("PreTrainedModel"):
            auto["AutoModel"] = cls
    if "AutoModelForCausalLM" not in auto:
        raise ValueError(f"{modeling.__name__} defines no PreTrainedModel that is a GenerationMixin")
    return Family(name, configs[0], auto)


def family_names():
    """Sub-packages of babylm_ds/models that hold a configuration.py and a modeling.py."""
    return sorted(m.name for m in pkgutil.iter_modules([_DIR]) if m.ispkg and all(
        os.path.isfile(os.path.join(_DIR, m.name, f)) for f in ("configuration.py", "modeling.py")))


def family_of(model_or_config):
    """The `Family` whose config class is (a base of) `model_or_config`'s config, else None."""
    config = getattr(model_or_config, "config", model_or_config)
    for name in family_names():
        family = load_family(name)
        if isinstance(config, family.config_class):
            return family
    return None


def register():
    """Register every family with AutoConfig and the Auto model classes (idempotent); returns the families."""
    import transformers

    families = [load_family(name) for name in family_names()]
    for family in families:
        transformers.AutoConfig.register(family.config_class.model_type, family.config_class, exist_ok=True)
        for auto, cls in family.auto_classes.items():
            getattr(transformers, auto).register(family.config_class, cls, exist_ok=True)
    return families
