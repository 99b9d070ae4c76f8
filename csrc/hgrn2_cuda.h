// Launchers of the HGRN2 CUDA kernels (hgrn2_cuda.cu) on raw device pointers; ATen-free.
#pragma once
#include <cuda_runtime_api.h>

#include "hgrn2_common.h"

namespace hgrn2_cuda {

enum Dtype { kF32 = 0, kBF16 = 1, kF16 = 2 };

struct Problem {
  int B, T, H, K, V;
  float scale;
  int dtype;  // Dtype of q, k, v, g, o, do, dq, dk, dv
};

using hgrn2::num_chunks;

// o = HGRN2(q, k, v, g); states [B, H, NC + 1, K, V] fp32 receives every chunk-start state and the
// final state. h0 may be null. Returns null or an error message.
const char* fwd(const Problem& p, const void* q, const void* k, const void* v, const void* g, const float* h0,
                void* o, float* states, cudaStream_t stream);

// Gradients; states/grads [B, H, NC + 1, K, V] and gsum [B, H, NC, K] are fp32 workspaces, dg is fp32.
// On return grads[:, :, 0] holds d initial_state. h0 and dht may be null. Returns null or an error.
const char* bwd(const Problem& p, const void* q, const void* k, const void* v, const void* g, const float* h0,
                const void* dout, const float* dht, void* dq, void* dk, void* dv, float* dg, float* states,
                float* grads, float* gsum, cudaStream_t stream);

}  // namespace hgrn2_cuda
