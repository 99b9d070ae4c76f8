// Launchers of the HGRN2 CUDA kernels (hgrn2_cuda.cu) on raw device pointers; ATen-free.
#pragma once
#include <cuda_runtime_api.h>

namespace hgrn2_cuda {

enum Dtype { kF32 = 0, kBF16 = 1, kF16 = 2 };

struct Problem {
  int N, T, H, K, V;  // N sequences of T rows, or with cu: N packed segments of T rows in all
  float scale;
  int dtype;      // Dtype of q, k, v, g, o, do, dq, dk, dv
  const int* cu;  // device int32 offsets [N + 1] (fla's cu_seqlens) or null
  bool vec;       // every row of q, k, v, g, do and the states 16-byte aligned (cp.async loads)
};

// Chunk slots of the states workspaces [slots, H, K, V].
int chunk_slots(const Problem& p);

// o = HGRN2(q, k, v, g); states [slots, H, K, V] fp32 receives every chunk-start state, ht [N, H, K, V]
// (may be null) the final states. h0 may be null. Returns null or an error message.
const char* fwd(const Problem& p, const void* q, const void* k, const void* v, const void* g, const float* h0,
                void* o, float* states, float* ht, cudaStream_t stream);

// Gradients; states and dh [slots, H, K, V] are fp32 workspaces, dg [rows, H, K] fp32, dh0 [N, H, K, V]
// (may be null). h0 and dht may be null. Returns null or an error message.
const char* bwd(const Problem& p, const void* q, const void* k, const void* v, const void* g, const float* h0,
                const void* dout, const float* dht, void* dq, void* dk, void* dv, float* dg, float* states,
                float* dh, float* dh0, cudaStream_t stream);

}  // namespace hgrn2_cuda
