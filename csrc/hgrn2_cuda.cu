// HGRN2 CUDA kernels: the bodies of hgrn2_kernels.h on the device policy of hgrn2_tile.h (tensor-core
// mma.sync: bf16 / fp16 m16n8k16, fp32 as 3xTF32 m16n8k8; fp32 state). 128 threads per block, tiles
// of 64 rows x 64 columns whatever K and V, so the shared memory per block is fixed per precision and
// variant (smem_plan: at most 128,000 B, fp32 K1; the lean fp32 K1 / K3 fit the 101,376 B of sm_86/89).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "hgrn2_cuda.h"
#include "hgrn2_kernels.h"

namespace hgrn2_cuda {
namespace {

using namespace hgrn2_tile;

// Each kernel runs the logical block of its (possibly folded) launch block: g is its grid unfolded.
#define HGRN2_BLOCK(g)                                                                               \
  extern __shared__ __align__(16) char smem[];                                                      \
  int x, y, z;                                                                                       \
  if (!unfold(g, Grid{(int)gridDim.x, (int)gridDim.y, (int)gridDim.z}, blockIdx.x, blockIdx.y, blockIdx.z, x, y, z)) \
    return

template <int M, bool REV, bool LEAN, class In>
__global__ void __launch_bounds__(kThreads, 1) k1_kernel(const Params<In, float> p, const Grid g) {
  HGRN2_BLOCK(g);
  k1_body<Dev<M>, REV, LEAN>(p, x, y, smem);
}
template <int M, bool BWD, class In>
__global__ void __launch_bounds__(kThreads, 1) k2_kernel(const Params<In, float> p, const Grid g) {
  HGRN2_BLOCK(g);
  k2_body<Dev<M>, BWD>(p, x, y, z, smem);
}
template <int M, bool LEAN, class In>
__global__ void __launch_bounds__(kThreads, 1) k3_kernel(const Params<In, float> p, const Grid g) {
  HGRN2_BLOCK(g);
  k3_body<Dev<M>, LEAN>(p, x, y, z, smem);
}

template <int M, class In>
struct CudaLaunch {
  using E = typename Dev<M>::E;
  const Params<In, float>& p;
  cudaStream_t stream;
  SmemPlan plan;

  template <class F>
  const char* go(F kernel, Grid g, size_t smem) const {
    if (g.x == 0 || g.y == 0 || g.z == 0) return nullptr;
    const Grid l = fold(g, kGridMax);
    if (l.x == 0) return "hgrn2 cuda: problem too large for one launch grid";
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err == cudaSuccess) {
      kernel<<<dim3(l.x, l.y, l.z), kThreads, smem, stream>>>(p, g);
      err = cudaGetLastError();
    }
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
  }
  // The lean variants are compiled only where the full one exceeds kSmemMin (has_lean1 / has_lean3).
  template <bool REV>
  const char* k1(Grid g) const {
    if constexpr (has_lean1<E, float>())
      if (plan.lean1) return go(k1_kernel<M, REV, true, In>, g, plan.bytes[0]);
    return go(k1_kernel<M, REV, false, In>, g, plan.bytes[0]);
  }
  template <bool BWD>
  const char* k2(Grid g) const { return go(k2_kernel<M, BWD, In>, g, plan.bytes[1]); }
  const char* k3(Grid g) const {
    if constexpr (has_lean3<E, float>())
      if (plan.lean3) return go(k3_kernel<M, true, In>, g, plan.bytes[2]);
    return go(k3_kernel<M, false, In>, g, plan.bytes[2]);
  }
};

template <int M, class In>
const char* run(const Problem& pr, const void* q, const void* k, const void* v, const void* g, const float* h0,
                const void* dout, const float* dht, void* o, void* dq, void* dk, void* dv, float* dg, float* states,
                float* dh, float* ht, float* dh0, cudaStream_t stream, bool bwd) {
  auto c = [](const void* x) { return static_cast<const In*>(x); };
  auto m = [](void* x) { return static_cast<In*>(x); };
  const Params<In, float> p{c(q), c(k), c(v), c(g), c(dout), h0, dht, m(o), m(dq), m(dk), m(dv), dg, states, dh, ht,
                            dh0, pr.cu, pr.N, pr.T, pr.H, pr.K, pr.V, pr.scale, pr.vec};
  int dev = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  if (const char* cap = getenv("BABYLM_DS_SMEM_OPTIN"))  // plan for less (tests: the lean variants on any GPU)
    optin = std::min(optin, atoi(cap));
  const SmemPlan plan = smem_plan<typename Dev<M>::E, float>(optin);
  static thread_local std::string msg;
  msg = smem_error(plan, optin, M);
  if (!msg.empty()) return msg.c_str();
  CudaLaunch<M, In> l{p, stream, plan};
  return bwd ? run_bwd(l, p) : run_fwd(l, p);
}

#define HGRN2_CUDA_DTYPES(...)                                    \
  switch (p.dtype) {                                              \
    case kF32: return run<kTf32x3, float>(__VA_ARGS__);           \
    case kBF16: return run<kBf16, __nv_bfloat16>(__VA_ARGS__);    \
    case kF16: return run<hgrn2_tile::kF16, __half>(__VA_ARGS__); \
    default: return "hgrn2 cuda: unsupported dtype";              \
  }

}  // namespace

int chunk_slots(const Problem& p) { return hgrn2_tile::chunk_slots(p.cu != nullptr, p.N, p.T); }

const char* fwd(const Problem& p, const void* q, const void* k, const void* v, const void* g, const float* h0,
                void* o, float* states, float* ht, cudaStream_t stream) {
  HGRN2_CUDA_DTYPES(p, q, k, v, g, h0, nullptr, nullptr, o, nullptr, nullptr, nullptr, nullptr, states, nullptr, ht,
                    nullptr, stream, false)
}

const char* bwd(const Problem& p, const void* q, const void* k, const void* v, const void* g, const float* h0,
                const void* dout, const float* dht, void* dq, void* dk, void* dv, float* dg, float* states,
                float* dh, float* dh0, cudaStream_t stream) {
  HGRN2_CUDA_DTYPES(p, q, k, v, g, h0, dout, dht, nullptr, dq, dk, dv, dg, states, dh, nullptr, dh0, stream, true)
}

}  // namespace hgrn2_cuda
