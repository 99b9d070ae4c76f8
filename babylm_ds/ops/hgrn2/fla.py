"""HGRN2 through fla's `chunk_gla` (flash-linear-attention, optional extra `pip install .[fla]`).

Same layout as ours ([B, T, H, K], state [N, H, K, V], cu_seqlens offsets); this wrapper adds our
conventions: o in the inputs' dtype, an fp32 final state, and fp32 inputs only when TF32 matmuls
are allowed (torch.set_float32_matmul_precision('high')), because chunk_gla computes its dots in tf32
(relative error ~1e-3 vs the oracle).
"""
import torch


def import_fla_ops():
    """`import fla.ops.gla` without fla's claim on transformers' own model types: `import fla` registers its
    Mamba, Mamba2 and BitNet classes under transformers' names, after which a checkpoint saved by transformers
    (our Mamba runs) would load as fla's Triton-only model. fla's other model types stay registered."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    before = dict(CONFIG_MAPPING._extra_content)
    import fla.ops.gla  # noqa: F401
    for key, config in list(CONFIG_MAPPING._extra_content.items()):
        if key in CONFIG_MAPPING_NAMES and before.get(key) is not config:
            del CONFIG_MAPPING._extra_content[key]


def fla_status(device, dtype):
    """(available, reason) for running fla's chunk_gla on `device` with inputs of `dtype`."""
    if device.type != "cuda":
        return False, f"fla's Triton kernels need CUDA tensors, got {device.type}"
    if dtype == torch.float64:
        return False, "fla's chunk_gla does not take float64 inputs"
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return False, ("fla's chunk_gla computes fp32 inputs in tf32 (error ~1e-3); allow TF32 with "
                       "torch.set_float32_matmul_precision('high')")
    try:
        import_fla_ops()
    except ImportError as e:
        return False, f"flash-linear-attention is not installed ({e}); pip install .[fla]"
    return True, ""


def fla_hgrn2(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens=None):
    """Backend entry: (o [B, T, H, V] in q's dtype, final_state [N, H, K, V] fp32 or None)."""
    from fla.ops.gla import chunk_gla

    if initial_state is not None:
        initial_state = initial_state.float()
    cpu = None if cu_seqlens is None or cu_seqlens.device.type != "cpu" else cu_seqlens.long()
    dev = None if cu_seqlens is None else cu_seqlens.to(q.device, torch.long, non_blocking=True)
    o, ht = chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                      output_final_state=output_final_state, cu_seqlens=dev, cu_seqlens_cpu=cpu)
    return o.to(q.dtype), (ht.float() if output_final_state else None)
