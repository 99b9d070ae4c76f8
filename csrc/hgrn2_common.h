// Per-element HGRN2 chunk math shared by the CPU (hgrn2_cpu.cpp) and CUDA (hgrn2_cuda.cu) kernels.
//
// Within a chunk, b_t = cumsum of g from the chunk start (b <= 0, non-increasing). A decay factor used on
// its own is exp(b_late - b_early) <= 1. Factors above 1 appear only where they are bounded: the sub-chunk
// reference products below (at most e^kRefSpan) and the CPU kernel's exp(b) * exp(-b) factorisation, used
// only while b >= -kFactorSpan in every column (hgrn2_cpu_kernel.h). So nothing overflows or flushes to zero
// in fp32, and g = -20 per step is safe.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define HGRN2_HD __host__ __device__ __forceinline__
#else
#define HGRN2_HD inline __attribute__((always_inline))
#endif

namespace hgrn2 {

constexpr int kChunk = 64;  // chunk length (the Python side's: babylm_ds/ops/hgrn2/chunk.py CHUNK)
constexpr int kSub = 16;    // sub-chunk length of the intra-chunk blocks
HGRN2_HD constexpr int num_chunks(int T) { return (T + kChunk - 1) / kChunk; }

// exp(x) for decay exponents. Host float: branch-free Cephes polynomial (1-2 ulp) that vectorises;
// device float: __expf; double: exp (used for gradcheck).
HGRN2_HD float gexp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  const float xc = x < -87.33f ? -87.33f : (x > 88.37f ? 88.37f : x);
  float n = xc * 1.44269504088896341f + 12582912.0f;  // round to nearest via the 1.5*2^23 trick
  n -= 12582912.0f;
  float r = xc - n * 0.693359375f;
  r -= n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float pow2n;
  memcpy(&pow2n, &bits, sizeof(float));
  return x < -87.33f ? 0.0f : p * pow2n;
#endif
}
HGRN2_HD double gexp(double x) { return exp(x); }

// Gated decay between a later position (b_late) and an earlier one (b_early): exp(b_late - b_early) <= 1.
template <typename A>
HGRN2_HD A decay(A b_late, A b_early) { return gexp(b_late - b_early); }

// Sub-chunk reference products for a query block I with reference r = first index of I:
// q~_i = q_i exp(b_i - b_r), k~_j = k_j exp(b_r - b_j); q~_i k~_j = q_i k_j exp(b_i - b_j). For keys
// j <= r the factor is <= 1; keys inside I (factor > 1) use them only while b_r - b_j < kRefSpan in
// every column, so no factor overflows or flushes q~ to zero in fp32.
constexpr float kRefSpan = 40.0f;

// dg of one position before the reverse cumsum: q*dq - k*dk (the reverse cumsum over t plus the
// final-state term sum_v S_T * dht gives dg exactly).
template <typename A>
HGRN2_HD A dg_term(A q, A dq, A k, A dk) { return q * dq - k * dk; }

}  // namespace hgrn2
