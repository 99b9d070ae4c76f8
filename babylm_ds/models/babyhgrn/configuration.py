"""BabyHGRN configuration (HGRN2 language model; field names follow fla's `HGRN2Config`).

Inlined into exported models (models/remote_code.py): keeps the rules in models/export_rules.py."""
from transformers import PreTrainedConfig


class BabyHGRNConfig(PreTrainedConfig):
    """HGRN2 LM: `num_hidden_layers` pre-norm blocks of HGRN2 attention (heads = hidden_size / expand_ratio)
    and a SwiGLU MLP whose width defaults to int(hidden_size * hidden_ratio * 2/3) rounded up to a multiple of 256.

    `backend` selects the `babylm_ds.ops.hgrn2` backend used by the chunked forward ("auto", "torch", ...).
    """

    model_type = "babyhgrn"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 16000
    hidden_size: int = 1024
    num_hidden_layers: int = 26
    expand_ratio: int = 128
    num_heads: int | None = None
    hidden_ratio: int = 4
    intermediate_size: int | None = None
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-6
    initializer_range: float = 0.02
    use_cache: bool = True
    backend: str = "auto"
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.hidden_size % self.expand_ratio:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of expand_ratio {self.expand_ratio}")
        self.num_heads = self.hidden_size // self.expand_ratio
        if self.intermediate_size is None:
            width = int(self.hidden_size * self.hidden_ratio * 2 / 3)
            self.intermediate_size = 256 * ((width + 255) // 256)
        super().__post_init__(**kwargs)
