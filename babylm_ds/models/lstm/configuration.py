"""BabyLSTM configuration: the LSTM language-model baseline of the zoo.

Inlined into exported models (models/remote_code.py): keeps the rules in models/export_rules.py."""
from transformers import PreTrainedConfig


class BabyLSTMConfig(PreTrainedConfig):
    """Embeddings -> `num_hidden_layers` stacked LSTM layers (`torch.nn.LSTM`) -> RMSNorm -> LM head.

    Each layer's cell has `intermediate_size` units (default: `hidden_size`); a wider cell's output is projected
    back to `hidden_size` (an LSTMP, `nn.LSTM(proj_size=hidden_size)`), so embeddings can stay tied.
    """

    model_type = "babylstm"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 16000
    hidden_size: int = 1024
    intermediate_size: int | None = None
    num_hidden_layers: int = 2
    norm_eps: float = 1e-6
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = self.hidden_size
        if self.intermediate_size < self.hidden_size:
            raise ValueError(f"intermediate_size {self.intermediate_size} must be >= hidden_size {self.hidden_size}")
        super().__post_init__(**kwargs)
