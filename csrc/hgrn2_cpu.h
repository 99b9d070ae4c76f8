// HGRN2 CPU kernels (hgrn2_cpu.cpp) on raw pointers; torch-free.
#pragma once
#include <string>
#include <vector>

namespace hgrn2 {

// Raw pointers of one call; layout q, k, g [B, T, H, K]; v, o [B, T, H, V]; states [B, H, K, V].
template <typename S>
struct Args {
  const S *q, *k, *v, *g, *h0, *dout, *dht;
  S *o, *ht, *dq, *dk, *dv, *dg, *dh0;
  int B, T, H, K, V;
  S scale;
};

// Run with `nthreads` OpenMP threads; float64 for gradcheck, float32 otherwise.
void cpu_fwd(const Args<float>& a, int nthreads);
void cpu_fwd(const Args<double>& a, int nthreads);
void cpu_bwd(const Args<float>& a, int nthreads);
void cpu_bwd(const Args<double>& a, int nthreads);
// Instruction sets of the kernels: "avx512", "avx2", "baseline". cpu_isa(): the one they run with (the
// best this CPU runs, or BABYLM_DS_CPU_ISA's, read once); set_cpu_isa(name): force one ("auto": the
// best); cpu_isas(): those this CPU runs, best first. A bad name throws std::invalid_argument.
const char* cpu_isa();
void set_cpu_isa(const std::string& name);
std::vector<std::string> cpu_isas();

}  // namespace hgrn2
