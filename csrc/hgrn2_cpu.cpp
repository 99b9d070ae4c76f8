// HGRN2 CPU kernels: OpenMP over (batch, head[, value tile]); the chunk loops are compiled three
// times (AVX-512, AVX2+FMA, baseline x86-64-v2) and picked at run time from the CPU's features.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "hgrn2_common.h"
#include "hgrn2_cpu.h"

namespace hgrn2 {

// Flush denormals to zero while a worker runs (decayed products underflow a lot with strong decay).
struct FtzScope {
#if defined(__x86_64__)
  unsigned csr = _mm_getcsr();
  FtzScope() { _mm_setcsr(csr | 0x8040); }
  ~FtzScope() { _mm_setcsr(csr); }
#endif
};

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,bmi,bmi2")
#define HGRN2_AVX512
namespace avx512 {
#include "hgrn2_cpu_kernel.h"
}
#undef HGRN2_AVX512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
namespace avx2 {
#include "hgrn2_cpu_kernel.h"
}
#pragma GCC pop_options
#endif
namespace base {
#include "hgrn2_cpu_kernel.h"
}

enum class Isa { kBase, kAvx2, kAvx512 };

static Isa detect_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBase;
}

static const Isa kIsa = detect_isa();

// Calls NS::FN<S>(args...) in the namespace compiled for this CPU.
#if defined(__x86_64__) && defined(__GNUC__)
#define HGRN2_DISPATCH(FN, S, ...)                                     \
  switch (kIsa) {                                                      \
    case Isa::kAvx512: avx512::FN<S>(__VA_ARGS__); break;              \
    case Isa::kAvx2: avx2::FN<S>(__VA_ARGS__); break;                  \
    default: base::FN<S>(__VA_ARGS__);                                 \
  }
#else
#define HGRN2_DISPATCH(FN, S, ...) base::FN<S>(__VA_ARGS__)
#endif

const char* cpu_isa() { return kIsa == Isa::kAvx512 ? "avx512" : (kIsa == Isa::kAvx2 ? "avx2" : "baseline"); }
void cpu_fwd(const Args<float>& a, int nthreads) { HGRN2_DISPATCH(run_fwd, float, a, nthreads); }
void cpu_fwd(const Args<double>& a, int nthreads) { HGRN2_DISPATCH(run_fwd, double, a, nthreads); }
void cpu_bwd(const Args<float>& a, int nthreads) { HGRN2_DISPATCH(run_bwd, float, a, nthreads); }
void cpu_bwd(const Args<double>& a, int nthreads) { HGRN2_DISPATCH(run_bwd, double, a, nthreads); }

}  // namespace hgrn2
