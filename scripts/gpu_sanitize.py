"""One small forward + backward of the CUDA extension per precision (fp32, bf16, fp16), equal-length and
packed, aligned and unaligned rows (K = 20, V = 36): the case that scripts/gpu_check.sh runs under
compute-sanitizer's memcheck and racecheck. `--device cpu`: the same calls through the CPU kernels (fp32)."""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from babylm_ds.ops import hgrn2  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    device = torch.device(p.parse_args(argv).device)
    dtypes = (torch.float32, torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.float32,)
    gen = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        for K, V, cu in ((64, 64, None), (20, 36, None), (32, 40, torch.tensor([0, 15, 80, 130]))):
            B = 1 if cu is not None else 2
            q, k, g = (torch.randn(B, 130, 2, K, generator=gen) for _ in range(3))
            v = torch.randn(B, 130, 2, V, generator=gen)
            ins = [x.to(device, dtype).requires_grad_() for x in (q, k, v, -torch.nn.functional.softplus(g))]
            o, ht = hgrn2(*ins, output_final_state=True, backend=device.type, cu_seqlens=cu)
            (o.float().square().sum() + ht.sum()).backward()
            assert all(torch.isfinite(x.grad).all() for x in ins), (dtype, K, V)
        print(f"{dtype}: forward + backward ok on {device}", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print("SANITIZE_CASE_OK")


if __name__ == "__main__":
    main()
