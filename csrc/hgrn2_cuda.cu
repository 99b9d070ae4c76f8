// HGRN2 CUDA kernels (fp32 accumulation; fp32 / bf16 / fp16 I/O), chunk length 64:
//   recur_kernel     sequential over chunks per (batch*head, value tile): chunk-start states (forward
//                    direction) or dL/dS at chunk ends (reverse direction), into fp32 workspaces;
//   fwd_out_kernel   one block per (chunk, batch*head, value tile): o = scale (q e^b) S_prev + A v;
//   bwd_chunk_kernel one block per (chunk, batch*head): dq, dk, dv and the chunk-local dg cumsum;
//   dg_carry_kernel  adds the later chunks' dg sums (and the final-state term) to each chunk.
// Chunk tiles live in shared memory; decays are pairwise exp(b_late - b_early) <= 1 (hgrn2_common.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "hgrn2_common.h"
#include "hgrn2_cuda.h"

namespace hgrn2_cuda {
namespace {

using hgrn2::decay;
using hgrn2::dg_term;
using hgrn2::gexp;
using hgrn2::kChunk;
using hgrn2::state_term;

constexpr int kThreads = 256;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

struct Dims {
  int T, H, K, V, NC;
  float scale;
};

// Rows [t0, t0 + L) of one head of a [B, T, H, D] tensor into a [L, D] fp32 shared tile (columns [c0, c0 + n)).
template <typename T>
__device__ void load_rows(float* dst, const T* src, int b, int h, int t0, int L, const Dims& d, int D, int c0,
                          int n) {
  for (int e = threadIdx.x; e < L * n; e += blockDim.x) {
    const int i = e / n, c = e % n;
    dst[e] = to_f(src[(((long)b * d.T + t0 + i) * d.H + h) * D + c0 + c]);
  }
}

// b[i][c] = cumsum of g over the chunk rows (one thread per column).
template <typename T>
__device__ void load_cumsum(float* bb, const T* g, int b, int h, int t0, int L, const Dims& d) {
  for (int c = threadIdx.x; c < d.K; c += blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < L; ++i) {
      acc += to_f(g[(((long)b * d.T + t0 + i) * d.H + h) * d.K + c]);
      bb[i * d.K + c] = acc;
    }
  }
}

// Forward direction (REVERSE = false): S <- e^{b_L} S + sum_j (k_j e^{b_L - b_j})^T v_j, writing the
// state before each chunk to out[n] and the final one to out[NC].
// Reverse direction: G <- e^{b_L} G + scale sum_i (q_i e^{b_i})^T do_i from the last chunk, writing
// G at the end of chunk n to out[n + 1] and d(initial state) to out[0].
template <typename T, bool REVERSE>
__global__ void recur_kernel(const T* __restrict__ qk, const T* __restrict__ g, const T* __restrict__ rows,
                             const float* __restrict__ init, float* __restrict__ out, Dims d, int VT) {
  extern __shared__ float smem[];
  const int bh = blockIdx.x, b = bh / d.H, h = bh % d.H, v0 = blockIdx.y * VT, vt = min(VT, d.V - v0);
  float *coef = smem, *bb = coef + kChunk * d.K, *rw = bb + kChunk * d.K, *S = rw + kChunk * VT;
  const long KV = (long)d.K * d.V;
  float* o = out + (long)bh * (d.NC + 1) * KV;
  for (int e = threadIdx.x; e < d.K * vt; e += blockDim.x) {
    const int c = e / vt, x = e % vt;
    S[e] = init ? init[bh * KV + (long)c * d.V + v0 + x] : 0.f;
  }
  for (int s = 0; s < d.NC; ++s) {
    const int n = REVERSE ? d.NC - 1 - s : s, t0 = n * kChunk, L = min(kChunk, d.T - t0);
    __syncthreads();
    for (int e = threadIdx.x; e < d.K * vt; e += blockDim.x)
      o[(long)(REVERSE ? n + 1 : n) * KV + (long)(e / vt) * d.V + v0 + e % vt] = S[e];
    load_cumsum(bb, g, b, h, t0, L, d);
    load_rows(coef, qk, b, h, t0, L, d, d.K, 0, d.K);
    load_rows(rw, rows, b, h, t0, L, d, d.V, v0, vt);
    __syncthreads();
    for (int e = threadIdx.x; e < L * d.K; e += blockDim.x) {
      const int c = e % d.K;
      coef[e] *= REVERSE ? d.scale * gexp(bb[e]) : decay(bb[(L - 1) * d.K + c], bb[e]);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < d.K * vt; e += blockDim.x) {
      const int c = e / vt, x = e % vt;
      float s_ = gexp(bb[(L - 1) * d.K + c]) * S[e];
      for (int j = 0; j < L; ++j) s_ = state_term(s_, coef[j * d.K + c], rw[j * vt + x]);
      S[e] = s_;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < d.K * vt; e += blockDim.x)
    o[(long)(REVERSE ? 0 : d.NC) * KV + (long)(e / vt) * d.V + v0 + e % vt] = S[e];
}

// A[i][j] = scale sum_c q_ic k_jc exp(b_ic - b_jc) for j <= i, 0 above the diagonal.
__device__ void intra_A(float* A, const float* q, const float* k, const float* bb, int L, int K, float scale) {
  for (int e = threadIdx.x; e < kChunk * kChunk; e += blockDim.x) {
    const int i = e / kChunk, j = e % kChunk;
    float s = 0.f;
    if (j <= i && i < L)
      for (int c = 0; c < K; ++c) s += q[i * K + c] * k[j * K + c] * decay(bb[i * K + c], bb[j * K + c]);
    A[e] = scale * s;
  }
}

template <typename T>
__global__ void fwd_out_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               const T* __restrict__ g, const float* __restrict__ states, T* __restrict__ o,
                               Dims d, int VT) {
  extern __shared__ float smem[];
  const int n = blockIdx.x, bh = blockIdx.y, b = bh / d.H, h = bh % d.H;
  const int v0 = blockIdx.z * VT, vt = min(VT, d.V - v0), t0 = n * kChunk, L = min(kChunk, d.T - t0);
  float *Q = smem, *Kc = Q + kChunk * d.K, *bb = Kc + kChunk * d.K, *A = bb + kChunk * d.K, *Vc = A + kChunk * kChunk;
  const float* S = states + ((long)bh * (d.NC + 1) + n) * d.K * d.V;
  load_rows(Q, q, b, h, t0, L, d, d.K, 0, d.K);
  load_rows(Kc, k, b, h, t0, L, d, d.K, 0, d.K);
  load_rows(Vc, v, b, h, t0, L, d, d.V, v0, vt);
  load_cumsum(bb, g, b, h, t0, L, d);
  __syncthreads();
  intra_A(A, Q, Kc, bb, L, d.K, d.scale);
  __syncthreads();
  for (int e = threadIdx.x; e < L * d.K; e += blockDim.x) Q[e] *= d.scale * gexp(bb[e]);
  __syncthreads();
  for (int e = threadIdx.x; e < L * vt; e += blockDim.x) {
    const int i = e / vt, x = e % vt;
    float s = 0.f;
    for (int c = 0; c < d.K; ++c) s += Q[i * d.K + c] * S[(long)c * d.V + v0 + x];
    for (int j = 0; j <= i; ++j) s += A[i * kChunk + j] * Vc[j * vt + x];
    o[(((long)b * d.T + t0 + i) * d.H + h) * d.V + v0 + x] = from_f<T>(s);
  }
}

template <typename T>
__global__ void bwd_chunk_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                 const T* __restrict__ g, const T* __restrict__ dout,
                                 const float* __restrict__ states, const float* __restrict__ grads,
                                 T* __restrict__ dq, T* __restrict__ dk, T* __restrict__ dv, float* __restrict__ dg,
                                 float* __restrict__ gsum, Dims d) {
  extern __shared__ float smem[];
  const int n = blockIdx.x, bh = blockIdx.y, b = bh / d.H, h = bh % d.H, K = d.K, V = d.V;
  const int t0 = n * kChunk, L = min(kChunk, d.T - t0);
  float *Q = smem, *Kc = Q + kChunk * K, *bb = Kc + kChunk * K, *W = bb + kChunk * K;
  float *Vc = W + kChunk * K, *Dc = Vc + kChunk * V, *A = Dc + kChunk * V, *dA = A + kChunk * kChunk;
  const long KV = (long)K * V;
  const float* Sp = states + ((long)bh * (d.NC + 1) + n) * KV;
  const float* G = grads + ((long)bh * (d.NC + 1) + n + 1) * KV;
  load_rows(Q, q, b, h, t0, L, d, K, 0, K);
  load_rows(Kc, k, b, h, t0, L, d, K, 0, K);
  load_rows(Vc, v, b, h, t0, L, d, V, 0, V);
  load_rows(Dc, dout, b, h, t0, L, d, V, 0, V);
  load_cumsum(bb, g, b, h, t0, L, d);
  __syncthreads();
  intra_A(A, Q, Kc, bb, L, K, d.scale);
  for (int e = threadIdx.x; e < kChunk * kChunk; e += blockDim.x) {
    const int i = e / kChunk, j = e % kChunk;
    float s = 0.f;
    if (j <= i && i < L)
      for (int x = 0; x < V; ++x) s += Dc[i * V + x] * Vc[j * V + x];
    dA[e] = d.scale * s;
  }
  __syncthreads();
  // dq_ic and dk_ic by the same thread; W = q dq - k dk.
  for (int e = threadIdx.x; e < L * K; e += blockDim.x) {
    const int i = e / K, c = e % K;
    const float bi = bb[e], bl = bb[(L - 1) * K + c];
    float sq = 0.f, sk = 0.f;
    for (int x = 0; x < V; ++x) {
      sq += Sp[(long)c * V + x] * Dc[i * V + x];
      sk += G[(long)c * V + x] * Vc[i * V + x];
    }
    float gq = d.scale * gexp(bi) * sq, gk = decay(bl, bi) * sk;
    for (int j = 0; j <= i; ++j) gq += dA[i * kChunk + j] * Kc[j * K + c] * decay(bi, bb[j * K + c]);
    for (int r = i; r < L; ++r) gk += dA[r * kChunk + i] * Q[r * K + c] * decay(bb[r * K + c], bi);
    W[e] = dg_term(Q[e], gq, Kc[e], gk);
    const long off = (((long)b * d.T + t0 + i) * d.H + h) * K + c;
    dq[off] = from_f<T>(gq);
    dk[off] = from_f<T>(gk);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < L * K; e += blockDim.x) Kc[e] *= decay(bb[(L - 1) * K + e % K], bb[e]);
  __syncthreads();
  for (int e = threadIdx.x; e < L * V; e += blockDim.x) {
    const int j = e / V, x = e % V;
    float s = 0.f;
    for (int c = 0; c < K; ++c) s += Kc[j * K + c] * G[(long)c * V + x];
    for (int i = j; i < L; ++i) s += A[i * kChunk + j] * Dc[i * V + x];
    dv[(((long)b * d.T + t0 + j) * d.H + h) * V + x] = from_f<T>(s);
  }
  for (int c = threadIdx.x; c < K; c += blockDim.x) {
    float acc = 0.f;
    for (int i = L - 1; i >= 0; --i) {
      acc += W[i * K + c];
      dg[(((long)b * d.T + t0 + i) * d.H + h) * K + c] = acc;
    }
    gsum[((long)bh * d.NC + n) * K + c] = acc;
  }
}

// dg[t] += sum_v S_T dht + sum of the chunk sums after t's chunk; one thread per (batch*head, c).
__global__ void dg_carry_kernel(float* __restrict__ dg, const float* __restrict__ gsum,
                                const float* __restrict__ states, const float* __restrict__ dht, int BH, Dims d) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= BH * d.K) return;
  const int bh = e / d.K, c = e % d.K, b = bh / d.H, h = bh % d.H;
  const long KV = (long)d.K * d.V;
  float carry = 0.f;
  if (dht) {
    const float* ST = states + ((long)bh * (d.NC + 1) + d.NC) * KV + (long)c * d.V;
    for (int x = 0; x < d.V; ++x) carry += ST[x] * dht[bh * KV + (long)c * d.V + x];
  }
  for (int n = d.NC - 1; n >= 0; --n) {
    const int t0 = n * kChunk, L = min(kChunk, d.T - t0);
    for (int i = 0; i < L; ++i) dg[(((long)b * d.T + t0 + i) * d.H + h) * d.K + c] += carry;
    carry += gsum[((long)bh * d.NC + n) * d.K + c];
  }
}

template <typename F, typename... Args>
const char* launch(F kernel, dim3 grid, size_t smem, cudaStream_t stream, Args... args) {
  int dev = 0, optin = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (smem > (size_t)optin)
    return "hgrn2 cuda: these head dims need more shared memory per block than this GPU has "
           "(backward: (4*64*K + 2*64*V + 8192) floats); use backend='triton'";
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  kernel<<<grid, kThreads, smem, stream>>>(args...);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

Dims dims(const Problem& p) { return {p.T, p.H, p.K, p.V, num_chunks(p.T), p.scale}; }

// Value tile of the sequential state kernels (more blocks when B*H is small).
int value_tile(const Problem& p) { return p.V < 32 ? p.V : (p.B * p.H >= 64 && p.V >= 64 ? 64 : 32); }

template <typename T>
const char* fwd_t(const Problem& p, const T* q, const T* k, const T* v, const T* g, const float* h0, T* o,
                  float* states, cudaStream_t s) {
  const Dims d = dims(p);
  const int BH = p.B * p.H, VT = value_tile(p), nvt = (p.V + VT - 1) / VT;
  size_t smem = sizeof(float) * (2 * kChunk * p.K + kChunk * VT + p.K * VT);
  if (const char* e = launch(recur_kernel<T, false>, dim3(BH, nvt), smem, s, k, g, v, h0, states, d, VT)) return e;
  const int OT = p.V < 64 ? p.V : 64, not_ = (p.V + OT - 1) / OT;
  smem = sizeof(float) * (3 * kChunk * p.K + kChunk * kChunk + kChunk * OT);
  return launch(fwd_out_kernel<T>, dim3(d.NC, BH, not_), smem, s, q, k, v, g, (const float*)states, o, d, OT);
}

template <typename T>
const char* bwd_t(const Problem& p, const T* q, const T* k, const T* v, const T* g, const float* h0, const T* dout,
                  const float* dht, T* dq, T* dk, T* dv, float* dg, float* states, float* grads, float* gsum,
                  cudaStream_t s) {
  const Dims d = dims(p);
  const int BH = p.B * p.H, VT = value_tile(p), nvt = (p.V + VT - 1) / VT;
  const size_t rsmem = sizeof(float) * (2 * kChunk * p.K + kChunk * VT + p.K * VT);
  if (const char* e = launch(recur_kernel<T, false>, dim3(BH, nvt), rsmem, s, k, g, v, h0, states, d, VT)) return e;
  if (const char* e = launch(recur_kernel<T, true>, dim3(BH, nvt), rsmem, s, q, g, dout, dht, grads, d, VT)) return e;
  const size_t smem = sizeof(float) * (4 * kChunk * p.K + 2 * kChunk * p.V + 2 * kChunk * kChunk);
  if (const char* e = launch(bwd_chunk_kernel<T>, dim3(d.NC, BH), smem, s, q, k, v, g, dout, (const float*)states,
                             (const float*)grads, dq, dk, dv, dg, gsum, d))
    return e;
  const int blocks = (BH * p.K + kThreads - 1) / kThreads;
  return launch(dg_carry_kernel, dim3(blocks), 0, s, dg, (const float*)gsum, (const float*)states, dht, BH, d);
}

template <typename T>
const T* c(const void* x) { return static_cast<const T*>(x); }
template <typename T>
T* m(void* x) { return static_cast<T*>(x); }

}  // namespace

#define HGRN2_CUDA_DTYPES(FN)                                \
  switch (p.dtype) {                                         \
    case kF32: return FN(float);                             \
    case kBF16: return FN(__nv_bfloat16);                    \
    case kF16: return FN(__half);                            \
    default: return "hgrn2 cuda: unsupported dtype";         \
  }

const char* fwd(const Problem& p, const void* q, const void* k, const void* v, const void* g, const float* h0,
                void* o, float* states, cudaStream_t stream) {
#define HGRN2_FWD(T) fwd_t<T>(p, c<T>(q), c<T>(k), c<T>(v), c<T>(g), h0, m<T>(o), states, stream)
  HGRN2_CUDA_DTYPES(HGRN2_FWD)
#undef HGRN2_FWD
}

const char* bwd(const Problem& p, const void* q, const void* k, const void* v, const void* g, const float* h0,
                const void* dout, const float* dht, void* dq, void* dk, void* dv, float* dg, float* states,
                float* grads, float* gsum, cudaStream_t stream) {
#define HGRN2_BWD(T)                                                                                         \
  bwd_t<T>(p, c<T>(q), c<T>(k), c<T>(v), c<T>(g), h0, c<T>(dout), dht, m<T>(dq), m<T>(dk), m<T>(dv), dg, states, \
           grads, gsum, stream)
  HGRN2_CUDA_DTYPES(HGRN2_BWD)
#undef HGRN2_BWD
}

}  // namespace hgrn2_cuda
