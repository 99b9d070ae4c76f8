from babylm_ds.layers.hgrn2 import HGRN2Attention, SwiGLU

__all__ = ["HGRN2Attention", "SwiGLU"]
