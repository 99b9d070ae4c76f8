// Host emulation of the HGRN2 GPU kernels (hgrn2_emu.cpp), bound in bindings.cpp for the tests, and the
// host-side launch decisions the CUDA launcher shares with it.
#pragma once
#include <torch/extension.h>

#include <string>

using OptT = c10::optional<at::Tensor>;
using OptV = c10::optional<std::vector<int64_t>>;

// As _C.hgrn2_fwd / hgrn2_bwd, on CPU tensors; mode: "bf16", "fp16", "tf32x3" or "fp64" (the mma
// operand precision; inputs are cast to bf16, fp16, fp32 or fp64 as the CUDA launcher gets them). vec:
// the 16-byte cp.async loads (unset: where hgrn2_vec_ok allows them; true: forced, and a misaligned
// piece throws), grid_max: the launch grid limits (x, y, z) the grids fold within (unset: CUDA's),
// smem_optin: a device's shared memory per block, which picks the kernel variants (hgrn2_smem_plan;
// unset: no limit, the full variants).
std::tuple<at::Tensor, OptT> hgrn2_emu_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& g, double scale, const OptT& h0,
                                           bool output_final_state, const OptT& cu_seqlens, const std::string& mode,
                                           c10::optional<bool> vec, const OptV& grid_max, c10::optional<int64_t> smem_optin);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, OptT> hgrn2_emu_bwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, double scale,
    const OptT& h0, const at::Tensor& dout, const OptT& dht, const OptT& cu_seqlens, const std::string& mode,
    c10::optional<bool> vec, const OptV& grid_max, c10::optional<int64_t> smem_optin);
// One emulated warp's D[16, N] = A[16, Kd] B[Kd, N] (float64 result) through warp_gemm; src "kn" / "nk":
// operands from 16-bit smem tiles by ldmatrix (B stored [Kd, N] / [N, Kd]), "fn": element by element.
at::Tensor hgrn2_tile_gemm(const at::Tensor& a, const at::Tensor& b, const std::string& mode, const std::string& src);

// Whether the kernels may load with 16-byte cp.async: every tensor they load that way (q, k, v, g, do;
// the fp32 states and dh) is contiguous and each of its rows starts 16-byte aligned (rows_aligned).
bool hgrn2_vec_ok(const std::vector<at::Tensor>& ts);
// The kernel variants and shared memory per block of mode bf16, fp16 or tf32x3 (fp32) on a device
// allowing `optin` bytes: (K1 lean, K3 lean, [K1, K2, K3 bytes], "" or the one-line error).
std::tuple<bool, bool, std::vector<int64_t>, std::string> hgrn2_smem_plan(const std::string& mode, int64_t optin);
// The grids of one forward and one backward call, [(kernel, grid, launch grid folded within gmax
// (unset: CUDA's limits))].
std::vector<std::tuple<std::string, std::vector<int64_t>, std::vector<int64_t>>> hgrn2_launch_grids(
    int64_t N, int64_t T, int64_t H, int64_t K, int64_t V, bool varlen, const OptV& gmax);
