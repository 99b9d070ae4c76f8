// HGRN2 CUDA kernels: the bodies of hgrn2_kernels.h on the device policy of hgrn2_tile.h (tensor-core
// mma.sync: bf16 / fp16 m16n8k16, fp32 as 3xTF32 m16n8k8; fp32 state). 128 threads per block, tiles
// of 64 rows x 64 columns whatever K and V, so the shared memory per block is fixed (at most 141 KiB,
// fp32 K3) and fits an A100 (163 KiB) for every head size.
#include <cuda_runtime.h>

#include "hgrn2_cuda.h"
#include "hgrn2_kernels.h"

namespace hgrn2_cuda {
namespace {

using namespace hgrn2_tile;

template <int M, bool REV, class In>
__global__ void __launch_bounds__(kThreads, 1) k1_kernel(const Params<In, float> p) {
  extern __shared__ __align__(16) char smem[];
  k1_body<Dev<M>, REV>(p, blockIdx.x, blockIdx.y, smem);
}
template <int M, bool BWD, class In>
__global__ void __launch_bounds__(kThreads, 1) k2_kernel(const Params<In, float> p) {
  extern __shared__ __align__(16) char smem[];
  k2_body<Dev<M>, BWD>(p, blockIdx.x, blockIdx.y, blockIdx.z, smem);
}
template <int M, class In>
__global__ void __launch_bounds__(kThreads, 1) k3_kernel(const Params<In, float> p) {
  extern __shared__ __align__(16) char smem[];
  k3_body<Dev<M>>(p, blockIdx.x, blockIdx.y, blockIdx.z, smem);
}

template <int M, class In>
struct CudaLaunch {
  using E = typename Dev<M>::E;
  const Params<In, float>& p;
  cudaStream_t stream;

  template <class F>
  const char* go(F kernel, Grid g, size_t smem) const {
    if (g.x == 0 || g.y == 0 || g.z == 0) return nullptr;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err == cudaSuccess) {
      kernel<<<dim3(g.x, g.y, g.z), kThreads, smem, stream>>>(p);
      err = cudaGetLastError();
    }
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
  }
  template <bool REV>
  const char* k1(Grid g) const { return go(k1_kernel<M, REV, In>, g, k1_smem<E, float>()); }
  template <bool BWD>
  const char* k2(Grid g) const { return go(k2_kernel<M, BWD, In>, g, k2_smem<E, float>()); }
  const char* k3(Grid g) const { return go(k3_kernel<M, In>, g, k3_smem<E, float>()); }
};

template <int M, class In>
const char* run(const Problem& pr, const void* q, const void* k, const void* v, const void* g, const float* h0,
                const void* dout, const float* dht, void* o, void* dq, void* dk, void* dv, float* dg, float* states,
                float* dh, float* ht, float* dh0, cudaStream_t stream, bool bwd) {
  auto c = [](const void* x) { return static_cast<const In*>(x); };
  auto m = [](void* x) { return static_cast<In*>(x); };
  const Params<In, float> p{c(q), c(k), c(v), c(g), c(dout), h0, dht, m(o), m(dq), m(dk), m(dv), dg, states, dh, ht,
                            dh0, pr.cu, pr.N, pr.T, pr.H, pr.K, pr.V, pr.scale, pr.vec};
  CudaLaunch<M, In> l{p, stream};
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
