// HGRN2 CPU kernels: OpenMP over (batch, head[, value tile]); the chunk loops are compiled three
// times (AVX-512, AVX2+FMA, baseline: x86-64-v2, or the target's own ISA off x86) and picked at run
// time from the CPU's features, or forced by BABYLM_DS_CPU_ISA / set_cpu_isa() (tests, benchmarks).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <string>
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
#define HGRN2_AVX2
namespace avx2 {
#include "hgrn2_cpu_kernel.h"
}
#undef HGRN2_AVX2
#pragma GCC pop_options
#endif
namespace base {
#include "hgrn2_cpu_kernel.h"
}

// Instruction sets, best last; kIsaNames[i] names Isa(i).
enum class Isa { kBase, kAvx2, kAvx512 };
static const char* const kIsaNames[] = {"baseline", "avx2", "avx512"};

static bool supported(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return isa == Isa::kBase;
#endif
}

static Isa best_isa() {
  int i = 2;
  while (!supported(Isa(i))) --i;
  return Isa(i);
}

std::vector<std::string> cpu_isas() {
  std::vector<std::string> out;
  for (int i = 2; i >= 0; --i)
    if (supported(Isa(i))) out.push_back(kIsaNames[i]);
  return out;
}

// The set named `name` ("auto" or empty: the best this CPU runs); `what` names the request in errors.
static Isa parse_isa(const std::string& name, const std::string& what) {
  if (name.empty() || name == "auto") return best_isa();
  std::string here;
  for (const std::string& x : cpu_isas()) here += (here.empty() ? "" : ", ") + x;
  for (int i = 0; i < 3; ++i)
    if (name == kIsaNames[i]) {
      if (!supported(Isa(i))) throw std::invalid_argument(what + ": this CPU lacks " + name + " (it runs " + here + ")");
      return Isa(i);
    }
  throw std::invalid_argument(what + ": unknown instruction set; use auto, avx512, avx2 or baseline (this CPU runs " +
                              here + ")");
}

static std::atomic<int> g_forced{-1};  // set_cpu_isa(), over BABYLM_DS_CPU_ISA

// The set the kernels run with: set_cpu_isa()'s, else BABYLM_DS_CPU_ISA's (read at the first call; a bad
// value throws at every call), else the best this CPU runs.
static Isa active_isa() {
  if (const int f = g_forced.load(std::memory_order_relaxed); f >= 0) return Isa(f);
  static const Isa from_env = [] {
    const char* env = std::getenv("BABYLM_DS_CPU_ISA");
    return parse_isa(env ? env : "", std::string("BABYLM_DS_CPU_ISA=") + (env ? env : ""));
  }();
  return from_env;
}

void set_cpu_isa(const std::string& name) { g_forced = int(parse_isa(name, "cpu isa '" + name + "'")); }
const char* cpu_isa() { return kIsaNames[int(active_isa())]; }

// Calls NS::FN<S>(args...) in the namespace compiled for the active instruction set.
#if defined(__x86_64__) && defined(__GNUC__)
#define HGRN2_DISPATCH(FN, S, ...)                                     \
  switch (active_isa()) {                                              \
    case Isa::kAvx512: avx512::FN<S>(__VA_ARGS__); break;              \
    case Isa::kAvx2: avx2::FN<S>(__VA_ARGS__); break;                  \
    default: base::FN<S>(__VA_ARGS__);                                 \
  }
#else
#define HGRN2_DISPATCH(FN, S, ...) \
  {                                \
    active_isa();                  \
    base::FN<S>(__VA_ARGS__);      \
  }
#endif

void cpu_fwd(const Args<float>& a, int nthreads) { HGRN2_DISPATCH(run_fwd, float, a, nthreads); }
void cpu_fwd(const Args<double>& a, int nthreads) { HGRN2_DISPATCH(run_fwd, double, a, nthreads); }
void cpu_bwd(const Args<float>& a, int nthreads) { HGRN2_DISPATCH(run_bwd, float, a, nthreads); }
void cpu_bwd(const Args<double>& a, int nthreads) { HGRN2_DISPATCH(run_bwd, double, a, nthreads); }

}  // namespace hgrn2
