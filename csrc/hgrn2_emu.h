// Host emulation of the HGRN2 GPU kernels (hgrn2_emu.cpp), bound in bindings.cpp for the tests.
#pragma once
#include <torch/extension.h>

#include <string>

using OptT = c10::optional<at::Tensor>;

// As _C.hgrn2_fwd / hgrn2_bwd, on CPU tensors; mode: "bf16", "fp16", "tf32x3" or "fp64" (the mma
// operand precision; inputs are taken in fp32, or fp64 for "fp64").
std::tuple<at::Tensor, OptT> hgrn2_emu_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& g, double scale, const OptT& h0,
                                           bool output_final_state, const OptT& cu_seqlens, const std::string& mode);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, OptT> hgrn2_emu_bwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, double scale,
    const OptT& h0, const at::Tensor& dout, const OptT& dht, const OptT& cu_seqlens, const std::string& mode);
// One emulated warp's D[16, N] = A[16, Kd] B[Kd, N] (float64 result) through warp_gemm; src "kn" / "nk":
// operands from 16-bit smem tiles by ldmatrix (B stored [Kd, N] / [N, Kd]), "fn": element by element.
at::Tensor hgrn2_tile_gemm(const at::Tensor& a, const at::Tensor& b, const std::string& mode, const std::string& src);
// Dynamic shared memory (bytes) of the K1, K2, K3 CUDA kernels for mode bf16, fp16 or tf32x3 (fp32).
std::vector<int64_t> hgrn2_tile_smem(const std::string& mode);
