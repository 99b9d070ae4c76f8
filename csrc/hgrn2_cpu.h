// HGRN2 CPU kernels (hgrn2_cpu.cpp) on raw pointers; torch-free.
#pragma once

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
const char* cpu_isa();  // instruction set the kernels were dispatched to

}  // namespace hgrn2
