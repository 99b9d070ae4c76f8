from babylm_ds.ops.hgrn2 import hgrn2, hgrn2_step, naive_hgrn2

__all__ = ["hgrn2", "hgrn2_step", "naive_hgrn2"]
