// Standalone driver of the HGRN2 CPU kernels (csrc/hgrn2_cpu.cpp), torch-free, for targets the
// extension is not built on (aarch64 under qemu, tests/test_cpu_isa.py) and for timing one path alone:
//   hgrn2_cpu_driver check        fwd + bwd of every instruction set this CPU runs against a float64
//                                 per-step recurrence; prints one line per set, exit 1 on a mismatch
//   hgrn2_cpu_driver bench T N    best of N fwd and fwd+bwd CPU times (ms: robust to other processes
//                                 on the cores) at B2 H4 K=V=64 on the active set (BABYLM_DS_CPU_ISA),
//                                 one thread
// Build: g++ -std=c++20 -O3 -fopenmp -Icsrc tests/hgrn2_cpu_driver.cpp (-march=x86-64-v2 on x86).
#include <cmath>
#include <cstdio>
#include <ctime>
#include <random>

#include "hgrn2_cpu.cpp"

using hgrn2::Args;

struct Problem {
  int B, T, H, K, V;
  float scale;
  std::vector<float> q, k, v, g, h0, dout, dht;  // inputs; g <= 0
  std::vector<float> o, ht, dq, dk, dv, dg, dh0;  // outputs

  Problem(int B_, int T_, int H_, int K_, int V_, float gmin, unsigned seed)
      : B(B_), T(T_), H(H_), K(K_), V(V_), scale(0.3f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<float> unif(gmin, 0.0f);
    const size_t nk = (size_t)B * T * H * K, nv = (size_t)B * T * H * V, ns = (size_t)B * H * K * V;
    for (auto* x : {&q, &k}) x->resize(nk);
    for (auto* x : {&v, &dout}) x->resize(nv);
    for (auto* x : {&h0, &dht}) x->resize(ns);
    for (auto* x : {&q, &k, &v, &dout, &h0, &dht})
      for (float& e : *x) e = normal(rng);
    g.resize(nk);
    for (float& e : g) e = unif(rng);
    for (auto* x : {&dq, &dk, &dg}) x->assign(nk, 0);
    o.assign(nv, 0), dv.assign(nv, 0), ht.assign(ns, 0), dh0.assign(ns, 0);
  }

  Args<float> args() {
    return {q.data(), k.data(), v.data(), g.data(), h0.data(), dout.data(), dht.data(), o.data(), ht.data(),
            dq.data(), dk.data(), dv.data(), dg.data(), dh0.data(), B, T, H, K, V, scale};
  }
};

// (o, ht, dq, dk, dv, dg, dh0) by the per-step recurrences in float64: S_t = e^{g_t} S_{t-1} + k_t^T v_t,
// o_t = scale q_t S_t; dS_t = scale q_t^T do_t + e^{g_{t+1}} dS_{t+1} from dS_T = dht.
static std::vector<std::vector<double>> reference(const Problem& p) {
  const int T = p.T, H = p.H, K = p.K, V = p.V;
  std::vector<std::vector<double>> r(7);
  const size_t nk = p.q.size(), nv = p.v.size();
  r[0].assign(nv, 0), r[1].assign(p.h0.size(), 0), r[2].assign(nk, 0), r[3].assign(nk, 0);
  r[4].assign(nv, 0), r[5].assign(nk, 0), r[6].assign(p.h0.size(), 0);
  for (int b = 0; b < p.B; ++b)
    for (int h = 0; h < H; ++h) {
      const size_t s0 = ((size_t)b * H + h) * K * V;
      auto at = [&](int t, int D) { return (((size_t)b * T + t) * H + h) * D; };
      std::vector<double> S((size_t)(T + 1) * K * V), dS(K * V);
      for (size_t e = 0; e < (size_t)K * V; ++e) S[e] = p.h0[s0 + e];
      for (int t = 0; t < T; ++t)
        for (int c = 0; c < K; ++c)
          for (int x = 0; x < V; ++x) {
            const size_t e = (size_t)c * V + x;
            S[(t + 1) * K * V + e] = std::exp((double)p.g[at(t, K) + c]) * S[t * K * V + e] +
                                     (double)p.k[at(t, K) + c] * p.v[at(t, V) + x];
          }
      for (size_t e = 0; e < (size_t)K * V; ++e) r[1][s0 + e] = S[(size_t)T * K * V + e], dS[e] = p.dht[s0 + e];
      for (int t = T - 1; t >= 0; --t) {
        const double* St = &S[(size_t)(t + 1) * K * V];
        const double* Sp = &S[(size_t)t * K * V];
        for (int c = 0; c < K; ++c)
          for (int x = 0; x < V; ++x) {
            const size_t e = (size_t)c * V + x;
            dS[e] += (double)p.scale * p.q[at(t, K) + c] * p.dout[at(t, V) + x];
            r[0][at(t, V) + x] += p.scale * p.q[at(t, K) + c] * St[e];
            r[2][at(t, K) + c] += p.scale * p.dout[at(t, V) + x] * St[e];
            r[3][at(t, K) + c] += dS[e] * p.v[at(t, V) + x];
            r[4][at(t, V) + x] += p.k[at(t, K) + c] * dS[e];
            r[5][at(t, K) + c] += Sp[e] * dS[e] * std::exp((double)p.g[at(t, K) + c]);
          }
        for (int c = 0; c < K; ++c)
          for (int x = 0; x < V; ++x) dS[(size_t)c * V + x] *= std::exp((double)p.g[at(t, K) + c]);
      }
      for (size_t e = 0; e < (size_t)K * V; ++e) r[6][s0 + e] = dS[e];
    }
  return r;
}

static int check() {
  // Remainder rows and columns of every tile (K, V), chunk and sub-chunk tails (T), steep sub-chunks.
  Problem p0(1, 150, 2, 20, 36, -4.0f, 0);
  const auto ref = reference(p0);
  int bad = 0;
  for (const std::string& isa : hgrn2::cpu_isas()) {
    hgrn2::set_cpu_isa(isa);
    Problem p = p0;
    hgrn2::cpu_fwd(p.args(), 1);
    hgrn2::cpu_bwd(p.args(), 1);
    const std::vector<float>* got[] = {&p.o, &p.ht, &p.dq, &p.dk, &p.dv, &p.dg, &p.dh0};
    const char* names[] = {"o", "ht", "dq", "dk", "dv", "dg", "dh0"};
    double worst = 0;
    const char* where = "";
    for (int i = 0; i < 7; ++i) {
      double err = 0, mag = 1e-6;
      for (size_t e = 0; e < ref[i].size(); ++e) {
        err = std::max(err, std::fabs((*got[i])[e] - ref[i][e]));
        mag = std::max(mag, std::fabs(ref[i][e]));
      }
      if (!(err / mag <= worst)) worst = err / mag, where = names[i];
    }
    const bool ok = worst < 1e-4;
    bad += !ok;
    std::printf("%s %s: max relative error %.2e (%s)\n", ok ? "ok" : "FAIL", isa.c_str(), worst, where);
  }
  return bad ? 1 : 0;
}

static double cpu_ms() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return 1e3 * t.tv_sec + 1e-6 * t.tv_nsec;
}

static int bench(int T, int n) {
  Problem p(2, T, 4, 64, 64, -1.0f, 0);
  double best_f = 1e30, best_fb = 1e30;
  for (int i = 0; i <= n; ++i) {  // the first round warms up
    const double t0 = cpu_ms();
    hgrn2::cpu_fwd(p.args(), 1);
    const double t1 = cpu_ms();
    hgrn2::cpu_bwd(p.args(), 1);
    const double t2 = cpu_ms();
    if (i == 0) continue;
    best_f = std::min(best_f, t1 - t0), best_fb = std::min(best_fb, t2 - t0);
  }
  std::printf("%s T=%d fwd %.3f ms fwd+bwd %.3f ms\n", hgrn2::cpu_isa(), T, best_f, best_fb);
  return 0;
}

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "check" && argc == 2) return check();
    if (mode == "bench" && argc == 4) return bench(std::atoi(argv[2]), std::atoi(argv[3]));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hgrn2_cpu_driver: error: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: hgrn2_cpu_driver check | bench T REPEATS\n");
  return 2;
}
