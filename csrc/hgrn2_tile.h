// Warp-level tiles of the HGRN2 GPU kernels, for two policies:
//   Dev<MODE>  (nvcc device code): mma.sync, ldmatrix, cp.async, shuffles, __syncthreads;
//   Host<MODE> (C++ host code): the 32 lanes of each warp emulated with the fragment layouts of the
//              PTX ISA and the hardware's operand rounding; barrier-separated phases run as loops over
//              warps. hgrn2_emu.cpp runs the kernel bodies of hgrn2_kernels.h with it on the CPU.
// MODE: kBf16 / kF16 (mma.m16n8k16, fp32 accumulate), kTf32x3 (mma.m16n8k8 tf32, fp32 operands split
// into big + small tf32 parts, three mmas: fp32-level error), kF64 (host only: fp64 math, gradcheck).
// A per-thread value is an R<T>: one T on the device, one T per (warp, lane) on the host, indexed by
// the thread id `th` that lanes() hands out.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "hgrn2_common.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

// Tile functions: inlined into the kernels on the device, left to the compiler on the host.
#if defined(__CUDACC__)
#define HGRN2_TD __host__ __device__ __forceinline__
#else
#define HGRN2_TD inline
#endif

namespace hgrn2_tile {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kC = hgrn2::kChunk;  // chunk length (time rows of every tile)
constexpr int kBK = 64, kBV = 64;  // key / value columns of a tile
static_assert(kC == 16 * kWarps && kBK == kC && kBV == kC, "one 16-row block per warp; square tiles");

enum ModeId { kBf16 = 0, kF16 = 1, kTf32x3 = 2, kF64 = 3, kTf32 = 4 };  // kTf32: host, one pass (tests)

// ---------------------------------------------------------------------------------------------
// Scalar conversions. Host 16-bit storage types: raw bits (same layout as the CUDA types).
struct bf16_t { uint16_t u; };
struct f16_t { uint16_t u; };

HGRN2_TD uint32_t fbits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
#endif
}
HGRN2_TD float bitsf(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, 4);
  return x;
#endif
}

// Round to nearest even to bf16 / fp16 bits; round to nearest (ties away) to tf32 as cvt.rna.tf32.f32.
inline uint16_t host_bf16(float x) {
  uint32_t u = fbits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline uint16_t host_f16(float x) {
  const uint32_t u = fbits(x), sign = (u >> 16) & 0x8000u, ax = u & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (ax < 0x38800000u)  // below 2^-14: subnormal (units of 2^-24), rint rounds to nearest even
    return (uint16_t)(sign | (uint32_t)std::rint(bitsf(ax) * 16777216.0f));
  uint32_t h = ((((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (uint16_t)(sign | h);
}
inline float host_f16_to_f(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) return (sign ? -1.0f : 1.0f) * (float)m * 5.9604644775390625e-8f;  // m * 2^-24
  if (e == 31) return bitsf(sign | 0x7f800000u | (m << 13));
  return bitsf(sign | ((e + 112u) << 23) | (m << 13));
}
HGRN2_TD float tf32(float x) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return __uint_as_float(r);
#else
  const uint32_t u = fbits(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;
  return bitsf((u + 0x1000u) & 0xffffe000u);
#endif
}

HGRN2_TD float tof(float x) { return x; }
HGRN2_TD double tof(double x) { return x; }
inline float tof(bf16_t x) { return bitsf((uint32_t)x.u << 16); }
inline float tof(f16_t x) { return host_f16_to_f(x.u); }
#if defined(__CUDACC__)
HGRN2_TD float tof(__nv_bfloat16 x) { return __bfloat162float(x); }
HGRN2_TD float tof(__half x) { return __half2float(x); }
#endif

template <class T> struct Cvt;  // Cvt<T>::from(float or double) -> T
template <> struct Cvt<float> {
  HGRN2_TD static float from(float x) { return x; }
  HGRN2_TD static float from(double x) { return (float)x; }
};
template <> struct Cvt<double> { HGRN2_TD static double from(double x) { return x; } };
template <> struct Cvt<bf16_t> { static bf16_t from(double x) { return {host_bf16((float)x)}; } };
template <> struct Cvt<f16_t> { static f16_t from(double x) { return {host_f16((float)x)}; } };
#if defined(__CUDACC__)
template <> struct Cvt<__nv_bfloat16> { HGRN2_TD static __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); } };
template <> struct Cvt<__half> { HGRN2_TD static __half from(float x) { return __float2half_rn(x); } };
#endif
template <class T, class S>
HGRN2_TD T conv(S x) { return Cvt<T>::from(tof(x)); }

// ---------------------------------------------------------------------------------------------
// Fragments and the lane <-> element maps the kernels use to fill and read them.
template <class A>
struct FragC { A x[4]; };  // 16x8 accumulator tile
struct U4 { uint32_t x[4]; };

// Accumulator element i of `lane`: row (lane / 4) + 8 (i / 2), column 2 (lane % 4) + i % 2.
HGRN2_TD int c_row(int lane, int i) { return (lane >> 2) + ((i >> 1) << 3); }
HGRN2_TD int c_col(int lane, int i) { return ((lane & 3) << 1) + (i & 1); }

// 16-bit operands, m16n8k16: A elements 2r, 2r+1 in register r (low half first), B in 2 registers.
template <int MODE>
struct Mode16 {
  using acc_t = float;
  static constexpr int kK = 16, kA = 8, kB = 4;
  // Largest decay span inside a 16-row block whose reference products (factors up to e^span) are
  // used; fp16 operands overflow past 65504, so they get e^8.
  static constexpr float kSpan = MODE == kF16 ? 8.0f : hgrn2::kRefSpan;
  struct FA { uint32_t x[4]; };
  struct FB { uint32_t x[2]; };
  HGRN2_TD static int a_row(int lane, int i) { return (lane >> 2) + (((i >> 1) & 1) << 3); }
  HGRN2_TD static int a_col(int lane, int i) { return ((lane & 3) << 1) + (i & 1) + ((i >> 2) << 3); }
  HGRN2_TD static int b_k(int lane, int i) { return ((lane & 3) << 1) + (i & 1) + ((i >> 1) << 3); }
  HGRN2_TD static uint32_t bits(float v) {
#if defined(__CUDA_ARCH__)
    if (MODE == kBf16) return __bfloat16_as_ushort(__float2bfloat16_rn(v));
    return __half_as_ushort(__float2half_rn(v));
#else
    return MODE == kBf16 ? host_bf16(v) : host_f16(v);
#endif
  }
  HGRN2_TD static void put(uint32_t* r, int i, float v) {
    const int s = (i & 1) << 4;
    r[i >> 1] = (r[i >> 1] & ~(0xffffu << s)) | (bits(v) << s);
  }
  HGRN2_TD static void set_a(FA& f, int i, float v) { put(f.x, i, v); }
  HGRN2_TD static void set_b(FB& f, int i, float v) { put(f.x, i, v); }
};

// tf32 / fp64 operands, m16n8k8 layouts.
struct Layout8 {
  static constexpr int kK = 8, kA = 4, kB = 2;
  static constexpr float kSpan = hgrn2::kRefSpan;
  HGRN2_TD static int a_row(int lane, int i) { return (lane >> 2) + ((i & 1) << 3); }
  HGRN2_TD static int a_col(int lane, int i) { return (lane & 3) + ((i >> 1) << 2); }
  HGRN2_TD static int b_k(int lane, int i) { return (lane & 3) + (i << 2); }
};
struct ModeTf32x3 : Layout8 {
  using acc_t = float;
  struct FA { float hi[4], lo[4]; };
  struct FB { float hi[2], lo[2]; };
  HGRN2_TD static void set_a(FA& f, int i, float v) { f.hi[i] = tf32(v), f.lo[i] = tf32(v - f.hi[i]); }
  HGRN2_TD static void set_b(FB& f, int i, float v) { f.hi[i] = tf32(v), f.lo[i] = tf32(v - f.hi[i]); }
};
struct ModeF64 : Layout8 {
  using acc_t = double;
  struct FA { double x[4]; };
  struct FB { double x[2]; };
  static void set_a(FA& f, int i, double v) { f.x[i] = v; }
  static void set_b(FB& f, int i, double v) { f.x[i] = v; }
};

template <int MODE> struct ModeOf { using type = Mode16<MODE>; };
template <> struct ModeOf<kTf32x3> { using type = ModeTf32x3; };
template <> struct ModeOf<kF64> { using type = ModeF64; };
template <> struct ModeOf<kTf32> { using type = ModeTf32x3; };

// ---------------------------------------------------------------------------------------------
// Host policy: the PTX ISA's fragment tables ("Matrix Fragments for mma.m16n8k16 / mma.m16n8k8",
// "ldmatrix"), written out as printed there and used only by the emulated instructions below.
namespace ptx {
inline void a_m16n8k16(int laneid, int i, int& row, int& col) {
  const int groupID = laneid >> 2, threadID_in_group = laneid % 4;
  row = (i == 0 || i == 1 || i == 4 || i == 5) ? groupID : groupID + 8;
  col = i < 4 ? threadID_in_group * 2 + (i & 0x1) : threadID_in_group * 2 + (i & 0x1) + 8;
}
inline void b_m16n8k16(int laneid, int i, int& row, int& col) {
  const int groupID = laneid >> 2, threadID_in_group = laneid % 4;
  row = i < 2 ? threadID_in_group * 2 + (i & 0x1) : threadID_in_group * 2 + (i & 0x1) + 8;
  col = groupID;
}
inline void a_m16n8k8_tf32(int laneid, int i, int& row, int& col) {
  const int groupID = laneid >> 2, threadID_in_group = laneid % 4;
  row = (i == 0 || i == 2) ? groupID : groupID + 8;
  col = (i == 0 || i == 1) ? threadID_in_group : threadID_in_group + 4;
}
inline void b_m16n8k8_tf32(int laneid, int i, int& row, int& col) {
  const int groupID = laneid >> 2, threadID_in_group = laneid % 4;
  row = i == 0 ? threadID_in_group : threadID_in_group + 4;
  col = groupID;
}
inline void c_m16n8(int laneid, int i, int& row, int& col) {
  const int groupID = laneid >> 2, threadID_in_group = laneid % 4;
  row = i < 2 ? groupID : groupID + 8;
  col = threadID_in_group * 2 + (i & 0x1);
}
}  // namespace ptx

template <int MODE>
struct Host {
  using Md = typename ModeOf<MODE>::type;
  using acc_t = typename Md::acc_t;
  using E = typename std::conditional<MODE == kBf16, bf16_t,
            typename std::conditional<MODE == kF16, f16_t, acc_t>::type>::type;  // operand tiles in smem
  static constexpr bool kLdsm = MODE == kBf16 || MODE == kF16;
  template <class T>
  struct R {
    T v[kThreads];
    T& operator[](int th) { return v[th]; }
    const T& operator[](int th) const { return v[th]; }
  };
  template <class F> static void warps(F&& f) { for (int w = 0; w < kWarps; ++w) f(w); }
  template <class F> static void lanes(int w, F&& f) { for (int l = 0; l < 32; ++l) f(w * 32 + l, l); }
  template <class F> static void block_for(int n, F&& f) { for (int i = 0; i < n; ++i) f(i); }
  static void sync() {}
  static void cp_commit() {}
  template <int N> static void cp_wait() {}

  // Block-cooperative copy of a [rows, cols] tile (row strides ldd, lds) into [RT, CT], zero-filled;
  // with `vec` and matching types in 16-byte pieces as Dev's cp.async, each piece's global and shared
  // addresses checked: a misaligned one throws where the device would fault.
  template <class T, class S>
  static void load_tile(T* dst, int ldd, const S* src, long lds, int rows, int cols, int RT, int CT, bool vec) {
    if constexpr (std::is_same<T, S>::value) {
      if (vec) {
        constexpr int kE = 16 / sizeof(T);
        for (int r = 0; r < RT; ++r)
          for (int c = 0; c < CT; c += kE) {
            const int n = r < rows ? std::max(0, std::min(kE, cols - c)) : 0;
            const T* s = n ? src + r * lds + c : src;
            T* d = dst + r * ldd + c;
            if ((reinterpret_cast<uintptr_t>(s) | reinterpret_cast<uintptr_t>(d)) % 16) {
              char msg[128];
              snprintf(msg, sizeof msg, "hgrn2 emulation: misaligned 16-byte cp.async (global %p, shared %p)",
                       (const void*)s, (void*)d);
              throw std::runtime_error(msg);
            }
            memcpy(d, s, n * sizeof(T));
            memset(d + n, 0, (kE - n) * sizeof(T));
          }
        return;
      }
    }
    for (int r = 0; r < RT; ++r)
      for (int c = 0; c < CT; ++c) dst[r * ldd + c] = r < rows && c < cols ? conv<T>(src[r * lds + c]) : conv<T>(0.0f);
  }

  template <class T>
  static void shfl_up(int w, R<T>& d, const R<T>& s, int delta) {
    for (int l = 0; l < 32; ++l) d[w * 32 + l] = s[w * 32 + (l >= delta ? l - delta : l)];
  }
  template <class T>
  static void shfl_idx(int w, R<T>& d, const R<T>& s, int src) {
    for (int l = 0; l < 32; ++l) d[w * 32 + l] = s[w * 32 + src];
  }
  static bool all(int w, const R<int>& x) {
    bool ok = true;
    for (int l = 0; l < 32; ++l) ok = ok && x[w * 32 + l];
    return ok;
  }

  // ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8j..8j+7 give the row addresses of matrix
  // j; register j of lane l gets row l/4, columns 2(l%4), 2(l%4)+1 of matrix j (.trans: of its transpose).
  template <bool TRANS, class F>
  static void ldsm_x4(int w, R<U4>& d, F&& addr) {
    for (int l = 0; l < 32; ++l)
      #pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint16_t e[2];
        #pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = TRANS ? 2 * (l % 4) + h : l / 4, col = TRANS ? l / 4 : 2 * (l % 4) + h;
          e[h] = reinterpret_cast<const uint16_t*>(addr(8 * j + row))[col];
        }
        d[w * 32 + l].x[j] = e[0] | ((uint32_t)e[1] << 16);
      }
  }

  // D = A B + C of one warp; products exact, sums in double, rounded once to the accumulator type.
  static void mma(int w, R<FragC<acc_t>>& c, const R<typename Md::FA>& a, const R<typename Md::FB>& b) {
    constexpr int K = Md::kK;
    double A[16][K], B[K][8], D[16][8];
    auto unpack = [&](int pass) {
      for (int l = 0; l < 32; ++l) {
        int row, col;
        #pragma unroll
        for (int i = 0; i < Md::kA; ++i) {
          if constexpr (K == 16) ptx::a_m16n8k16(l, i, row, col);
          else ptx::a_m16n8k8_tf32(l, i, row, col);
          A[row][col] = aval(a[w * 32 + l], i, pass);
        }
        #pragma unroll
        for (int i = 0; i < Md::kB; ++i) {
          if constexpr (K == 16) ptx::b_m16n8k16(l, i, row, col);
          else ptx::b_m16n8k8_tf32(l, i, row, col);
          B[row][col] = bval(b[w * 32 + l], i, pass);
        }
      }
    };
    for (int l = 0; l < 32; ++l)
      #pragma unroll
      for (int i = 0; i < 4; ++i) {
        int row, col;
        ptx::c_m16n8(l, i, row, col);
        D[row][col] = c[w * 32 + l].x[i];
      }
    // 3xTF32: big*small, small*big, then big*big, each an mma rounding to fp32.
    for (int pass = MODE == kTf32x3 ? 0 : 2; pass < 3; ++pass) {
      unpack(pass);
      for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) {
          double s = D[m][n];
          for (int k = 0; k < K; ++k) s += A[m][k] * B[k][n];
          D[m][n] = (acc_t)s;
        }
    }
    for (int l = 0; l < 32; ++l)
      #pragma unroll
      for (int i = 0; i < 4; ++i) {
        int row, col;
        ptx::c_m16n8(l, i, row, col);
        c[w * 32 + l].x[i] = (acc_t)D[row][col];
      }
  }

 private:
  // Operand element i of a lane's fragment; pass 0/1/2 of 3xTF32 picks (hi, lo), (lo, hi), (hi, hi).
  static double half16(uint32_t r, int h) {
    const uint16_t u = (uint16_t)(r >> (16 * h));
    return MODE == kBf16 ? (double)bitsf((uint32_t)u << 16) : (double)host_f16_to_f(u);
  }
  template <class F>
  static double aval(const F& f, int i, int pass) {
    if constexpr (MODE == kF64) return f.x[i];
    else if constexpr (MODE == kTf32x3 || MODE == kTf32) return pass == 1 ? f.lo[i] : f.hi[i];
    else return half16(f.x[i >> 1], i & 1);
  }
  template <class F>
  static double bval(const F& f, int i, int pass) {
    if constexpr (MODE == kF64) return f.x[i];
    else if constexpr (MODE == kTf32x3 || MODE == kTf32) return pass == 0 ? f.lo[i] : f.hi[i];
    else return half16(f.x[i >> 1], i & 1);
  }
};

// ---------------------------------------------------------------------------------------------
// Device policy.
#if defined(__CUDACC__)
template <int MODE>
struct Dev {
  static_assert(MODE != kF64, "fp64 runs on the host only");
  using Md = typename ModeOf<MODE>::type;
  using acc_t = float;
  using E = typename std::conditional<MODE == kBf16, __nv_bfloat16,
            typename std::conditional<MODE == kF16, __half, float>::type>::type;
  static constexpr bool kLdsm = MODE != kTf32x3;
  template <class T>
  struct R {
    T v;
    __device__ __forceinline__ T& operator[](int) { return v; }
    __device__ __forceinline__ const T& operator[](int) const { return v; }
  };
  template <class F> __device__ __forceinline__ static void warps(F&& f) { f((int)(threadIdx.x >> 5)); }
  template <class F> __device__ __forceinline__ static void lanes(int, F&& f) {
    f((int)threadIdx.x, (int)(threadIdx.x & 31));
  }
  template <class F> __device__ __forceinline__ static void block_for(int n, F&& f) {
    for (int i = threadIdx.x; i < n; i += kThreads) f(i);
  }
  __device__ __forceinline__ static void sync() { __syncthreads(); }
  __device__ __forceinline__ static void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
  template <int N> __device__ __forceinline__ static void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
  }

  // cp.async in 16-byte pieces (zero-filled past `cols`) when the types match and `vec` says every
  // row is 16-byte aligned; converting element loads otherwise.
  template <class T, class S>
  __device__ __forceinline__ static void load_tile(T* dst, int ldd, const S* src, long lds, int rows, int cols,
                                                   int RT, int CT, bool vec) {
    if constexpr (std::is_same<T, S>::value) {
      if (vec) {
        constexpr int kE = 16 / sizeof(T);
        const int segs = CT / kE;
        for (int e = threadIdx.x; e < RT * segs; e += kThreads) {
          const int r = e / segs, c = (e % segs) * kE;
          const int n = r < rows ? max(0, min(kE, cols - c)) : 0;
          const T* s = n ? src + r * lds + c : src;
          const unsigned d = (unsigned)__cvta_generic_to_shared(dst + r * ldd + c);
          asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(s), "r"(n * (int)sizeof(T)));
        }
        return;
      }
    }
    for (int e = threadIdx.x; e < RT * CT; e += kThreads) {
      const int r = e / CT, c = e % CT;
      dst[r * ldd + c] = r < rows && c < cols ? conv<T>(src[r * lds + c]) : conv<T>(0.0f);
    }
  }

  template <class T>
  __device__ __forceinline__ static void shfl_up(int, R<T>& d, const R<T>& s, int delta) {
    d.v = __shfl_up_sync(0xffffffffu, s.v, delta);
  }
  template <class T>
  __device__ __forceinline__ static void shfl_idx(int, R<T>& d, const R<T>& s, int src) {
    d.v = __shfl_sync(0xffffffffu, s.v, src);
  }
  __device__ __forceinline__ static bool all(int, const R<int>& x) { return __all_sync(0xffffffffu, x.v); }

  template <bool TRANS, class F>
  __device__ __forceinline__ static void ldsm_x4(int, R<U4>& d, F&& addr) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(addr((int)(threadIdx.x & 31)));
    if (TRANS)
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(d.v.x[0]), "=r"(d.v.x[1]), "=r"(d.v.x[2]), "=r"(d.v.x[3]) : "r"(a));
    else
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(d.v.x[0]), "=r"(d.v.x[1]), "=r"(d.v.x[2]), "=r"(d.v.x[3]) : "r"(a));
  }

  __device__ __forceinline__ static void mma(int, R<FragC<float>>& c, const R<typename Md::FA>& a,
                                             const R<typename Md::FB>& b) {
    float* d = c.v.x;
    if constexpr (MODE == kTf32x3) {
      const auto& A = a.v;
      const auto& B = b.v;
      mma_tf32(d, A.hi, B.lo);
      mma_tf32(d, A.lo, B.hi);
      mma_tf32(d, A.hi, B.hi);
    } else {
      const uint32_t* A = a.v.x;
      const uint32_t* B = b.v.x;
      if constexpr (MODE == kBf16)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]));
      else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]));
    }
  }

 private:
  __device__ __forceinline__ static void mma_tf32(float* d, const float* a, const float* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
          "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
  }
};
#endif

// ---------------------------------------------------------------------------------------------
// Operand sources of warp_gemm: each fills a warp's A fragment (rows m0..m0+15 of its own view, k
// columns k0..) or a pair of B fragments (k rows k0.., n columns n0..n0+15).

// Element functor f(m, k) / f(k, n) -> accumulator value, rounded when the fragment is filled.
template <class F>
struct Fn {
  F f;
  template <class P>
  HGRN2_TD void load_a(int w, typename P::template R<typename P::Md::FA>& a, int k0) const {
    using Md = typename P::Md;
    P::lanes(w, [&](int th, int lane) {
      #pragma unroll
      for (int i = 0; i < Md::kA; ++i) Md::set_a(a[th], i, f(Md::a_row(lane, i), k0 + Md::a_col(lane, i)));
    });
  }
  template <class P>
  HGRN2_TD void load_b(int w, typename P::template R<typename P::Md::FB>* b, int k0, int n0) const {
    using Md = typename P::Md;
    P::lanes(w, [&](int th, int lane) {
      #pragma unroll
      for (int t = 0; t < 2; ++t)
        #pragma unroll
        for (int i = 0; i < Md::kB; ++i) Md::set_b(b[t][th], i, f(k0 + Md::b_k(lane, i), n0 + 8 * t + (lane >> 2)));
    });
  }
};
template <class F>
HGRN2_TD Fn<F> fn(F f) { return Fn<F>{f}; }

// Row-major smem tiles: TileA: A(m, k) = p[m ld + k]; TileAT: A(m, k) = p[k ld + m];
// TileKN: B(k, n) = p[k ld + n]; TileNK: B(k, n) = p[n ld + k]. Tiles of the policy's 16-bit operand
// type load through ldmatrix (.trans for TileKN); the others element by element.
template <class T>
struct TileA {
  const T* p;
  int ld;
  template <class P>
  HGRN2_TD void load_a(int w, typename P::template R<typename P::Md::FA>& a, int k0) const {
    if constexpr (P::kLdsm && std::is_same<T, typename P::E>::value) {
      typename P::template R<U4> r;
      P::template ldsm_x4<false>(w, r, [&](int l) { return p + ((l & 7) + ((l >> 3 & 1) << 3)) * ld + k0 + ((l >> 4) << 3); });
      P::lanes(w, [&](int th, int) { for (int j = 0; j < 4; ++j) a[th].x[j] = r[th].x[j]; });
    } else {
      fn([&](int m, int k) { return tof(p[m * ld + k]); }).template load_a<P>(w, a, k0);
    }
  }
};
template <class T>
struct TileAT {
  const T* p;
  int ld;
  template <class P>
  HGRN2_TD void load_a(int w, typename P::template R<typename P::Md::FA>& a, int k0) const {
    fn([&](int m, int k) { return tof(p[k * ld + m]); }).template load_a<P>(w, a, k0);
  }
};
template <class T, bool NK>
struct TileB {
  const T* p;
  int ld;
  template <class P>
  HGRN2_TD void load_b(int w, typename P::template R<typename P::Md::FB>* b, int k0, int n0) const {
    if constexpr (P::kLdsm && std::is_same<T, typename P::E>::value) {
      typename P::template R<U4> r;
      // Matrix j = l / 8 of the x4 load: TileKN (k0 + 8 (j % 2), n0 + 8 (j / 2)), transposed;
      // TileNK (n0 + 8 (j / 2), k0 + 8 (j % 2)). Registers 0, 1 -> n-tile n0; 2, 3 -> n0 + 8.
      P::template ldsm_x4<!NK>(w, r, [&](int l) {
        const int a = (l & 7) + ((l >> 3 & 1) << 3), b = (l >> 4) << 3;
        return NK ? p + (n0 + (l & 7) + b) * ld + k0 + ((l >> 3 & 1) << 3) : p + (k0 + a) * ld + n0 + b;
      });
      P::lanes(w, [&](int th, int) {
        #pragma unroll
        for (int t = 0; t < 2; ++t) b[t][th].x[0] = r[th].x[2 * t], b[t][th].x[1] = r[th].x[2 * t + 1];
      });
    } else {
      fn([&](int k, int n) { return tof(NK ? p[n * ld + k] : p[k * ld + n]); }).template load_b<P>(w, b, k0, n0);
    }
  }
};
template <class T> using TileKN = TileB<T, false>;
template <class T> using TileNK = TileB<T, true>;

// acc[j] += A[0:16, kbeg:kend] B[kbeg:kend, 8j:8j+8] for the n-tiles j < nt (nt even, <= NT) of warp w.
template <class P, int NT, class SA, class SB>
HGRN2_TD void warp_gemm(int w, typename P::template R<FragC<typename P::acc_t>> (&acc)[NT], int nt, int kbeg,
                        int kend, const SA& sa, const SB& sb) {
  using Md = typename P::Md;
  for (int k0 = kbeg; k0 < kend; k0 += Md::kK) {
    typename P::template R<typename Md::FA> a;
    sa.template load_a<P>(w, a, k0);
#pragma unroll
    for (int j = 0; j < NT; j += 2) {
      if (j >= nt) break;
      typename P::template R<typename Md::FB> b[2];
      sb.template load_b<P>(w, b, k0, 8 * j);
      P::mma(w, acc[j], a, b[0]);
      P::mma(w, acc[j + 1], a, b[1]);
    }
  }
}

// Zero a warp's accumulators.
template <class P, int NT>
HGRN2_TD void zero(int w, typename P::template R<FragC<typename P::acc_t>> (&acc)[NT]) {
  P::lanes(w, [&](int th, int) {
    #pragma unroll
    for (int j = 0; j < NT; ++j)
      #pragma unroll
      for (int i = 0; i < 4; ++i) acc[j][th].x[i] = 0;
  });
}

}  // namespace hgrn2_tile
