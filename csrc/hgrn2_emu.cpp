// The HGRN2 GPU kernels (hgrn2_kernels.h) run on the CPU by the host policy of hgrn2_tile.h: emulated
// warps, PTX fragment layouts and operand rounding. For tests (tests/test_tiles.py); -O1 keeps the
// build of these 26 kernel instantiations short.
#pragma GCC optimize("O1")
#include "hgrn2_emu.h"

#include <algorithm>
#include <string>
#include <vector>

#include "hgrn2_kernels.h"

namespace hgrn2_tile {
namespace {

// The launch grid of g folded within `gmax`, every launch block run on the logical block it stands for
// (as the CUDA kernels do), each with its own shared memory (16-byte aligned) filled with NaN bytes: a
// read of an unwritten element shows.
template <class F>
void grid_for(const Grid& g, const Grid& gmax, size_t smem, F&& body) {
  if ((int64_t)g.x * g.y * g.z == 0) return;
  const Grid l = fold(g, gmax);
  TORCH_CHECK(l.x > 0, "hgrn2 emulation: grid ", g.x, " x ", g.y, " x ", g.z, " does not fold within the limits");
  at::parallel_for(0, (int64_t)l.x * l.y * l.z, 1, [&](int64_t lo, int64_t hi) {
    struct alignas(16) Line { char b[16]; };
    std::vector<Line> mem((smem + 15) / 16);
    char* m = mem.data()->b;
    for (int64_t i = lo; i < hi; ++i) {
      std::fill(m, m + smem, (char)0xff);
      int x, y, z;
      if (unfold(g, l, (int)(i % l.x), (int)(i / l.x % l.y), (int)(i / ((int64_t)l.x * l.y)), x, y, z)) body(x, y, z, m);
    }
  });
}

template <int MODE, class In, class A>
struct EmuLaunch {
  using P = Host<MODE>;
  const Params<In, A>& p;
  Grid gmax;
  SmemPlan plan;
  template <bool REV>
  const char* k1(Grid g) {
    grid_for(g, gmax, plan.bytes[0], [&](int x, int y, int, char* s) {
      if constexpr (has_lean1<In, A>())
        if (plan.lean1) return k1_body<P, REV, true>(p, x, y, s);
      k1_body<P, REV, false>(p, x, y, s);
    });
    return nullptr;
  }
  template <bool BWD>
  const char* k2(Grid g) {
    grid_for(g, gmax, plan.bytes[1], [&](int x, int y, int z, char* s) { k2_body<P, BWD>(p, x, y, z, s); });
    return nullptr;
  }
  const char* k3(Grid g) {
    grid_for(g, gmax, plan.bytes[2], [&](int x, int y, int z, char* s) {
      if constexpr (has_lean3<In, A>())
        if (plan.lean3) return k3_body<P, true>(p, x, y, z, s);
      k3_body<P, false>(p, x, y, z, s);
    });
    return nullptr;
  }
};

// A Launch for run_fwd / run_bwd that records each kernel's grid and its launch grid.
struct GridLog {
  Grid max;
  std::vector<std::tuple<std::string, std::vector<int64_t>, std::vector<int64_t>>> out;
  const char* add(const char* name, Grid g) {
    const Grid l = fold(g, max);
    out.emplace_back(name, std::vector<int64_t>{g.x, g.y, g.z}, std::vector<int64_t>{l.x, l.y, l.z});
    return nullptr;
  }
  template <bool REV> const char* k1(Grid g) { return add(REV ? "k1_rev" : "k1", g); }
  template <bool BWD> const char* k2(Grid g) { return add(BWD ? "k2_bwd" : "k2", g); }
  const char* k3(Grid g) { return add("k3", g); }
};

// How an emulated call runs: the 16-byte path (unset: as the launcher, by hgrn2_vec_ok; true: forced,
// the predicate bypassed), the grid limits and the device's opt-in shared memory per block.
struct EmuOpts {
  c10::optional<bool> vec;
  Grid gmax;
  size_t smem;
};

Grid grid_of(const OptV& lim) {
  if (!lim) return kGridMax;
  const std::vector<int64_t>& g = *lim;
  TORCH_CHECK_VALUE(g.size() == 3 && g[0] > 0 && g[1] > 0 && g[2] > 0 && g[0] <= kGridMax.x && g[1] <= kGridMax.y &&
                        g[2] <= kGridMax.z, "hgrn2 emulation: grid_max must be 3 positive limits within the CUDA ones");
  return {(int)g[0], (int)g[1], (int)g[2]};
}

size_t smem_of(c10::optional<int64_t> optin) {
  TORCH_CHECK_VALUE(!optin || *optin > 0, "hgrn2 emulation: smem_optin must be positive");
  return optin ? (size_t)*optin : SIZE_MAX;  // unset: no limit, the full variants
}

int mode_id(const std::string& m) {
  if (m == "bf16") return kBf16;
  if (m == "fp16") return kF16;
  if (m == "tf32x3") return kTf32x3;
  if (m == "tf32") return kTf32;
  TORCH_CHECK_VALUE(m == "fp64", "hgrn2 emulation: mode must be bf16, fp16, tf32, tf32x3 or fp64, got ", m);
  return kF64;
}

template <class T>
T* ptr(const at::Tensor& t) { return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr; }

// One call's tensors, contiguous: inputs and their gradients in the mode's input dtype (bf16, fp16,
// fp32, fp64: as the CUDA launcher passes them), states and dg in its accumulator type.
struct Call {
  at::Tensor q, k, v, g, dout, h0, dht, cu, o, dq, dk, dv, dg, states, dh, ht, dh0;
  int N, T, H, K, V, mode;
  double scale;
  EmuOpts opts;

  template <int MODE>
  void run() {
    using In = typename Host<MODE>::E;
    using A = typename Host<MODE>::acc_t;
    const bool vec = opts.vec ? *opts.vec : hgrn2_vec_ok({q, k, v, g, dout, states, dh});
    const Params<In, A> p{ptr<In>(q), ptr<In>(k), ptr<In>(v), ptr<In>(g), ptr<In>(dout), ptr<A>(h0), ptr<A>(dht),
                          ptr<In>(o), ptr<In>(dq), ptr<In>(dk), ptr<In>(dv), ptr<A>(dg), ptr<A>(states), ptr<A>(dh),
                          ptr<A>(ht), ptr<A>(dh0), cu.defined() ? cu.data_ptr<int>() : nullptr, N, T, H, K, V,
                          (A)scale, vec};
    const SmemPlan plan = smem_plan<In, A>(opts.smem);
    const std::string err = smem_error(plan, opts.smem, MODE);
    TORCH_CHECK(err.empty(), err);
    EmuLaunch<MODE, In, A> l{p, opts.gmax, plan};
    dout.defined() ? run_bwd(l, p) : run_fwd(l, p);
  }
  void run() {
    switch (mode) {
      case kBf16: return run<kBf16>();
      case kF16: return run<kF16>();
      case kTf32x3: return run<kTf32x3>();
      default: return run<kF64>();
    }
  }
};

at::ScalarType in_dtype(int mode) {
  return mode == kBf16 ? at::kBFloat16 : mode == kF16 ? at::kHalf : mode == kF64 ? at::kDouble : at::kFloat;
}

Call make_call(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, double scale,
               const OptT& h0, const OptT& cu, int mode, const EmuOpts& opts) {
  TORCH_CHECK_VALUE(mode != kTf32, "hgrn2 emulation: the kernels run bf16, fp16, tf32x3 or fp64 (tf32: tile_gemm only)");
  const auto dt = in_dtype(mode), acc = mode == kF64 ? at::kDouble : at::kFloat;
  auto cv = [](const at::Tensor& t, at::ScalarType d) { return t.to(d).contiguous(); };
  Call c;
  c.q = cv(q, dt), c.k = cv(k, dt), c.v = cv(v, dt), c.g = cv(g, dt), c.scale = scale, c.mode = mode, c.opts = opts;
  c.T = q.size(1), c.H = q.size(2), c.K = q.size(3), c.V = v.size(3), c.N = q.size(0);
  if (cu) {
    TORCH_CHECK_VALUE(q.size(0) == 1, "hgrn2: cu_seqlens needs packed inputs with B = 1, got B = ", q.size(0));
    c.cu = cu->to(at::kInt).contiguous(), c.N = cu->size(0) - 1;
  }
  if (h0) c.h0 = cv(*h0, acc);
  c.states = at::empty({chunk_slots(cu.has_value(), c.N, c.T), c.H, c.K, c.V}, c.q.options().dtype(acc));
  return c;
}

OptT opt(bool keep, const at::Tensor& t) { return keep ? OptT(t) : OptT(); }

// D[16, N] = A[16, Kd] B[Kd, N] by one emulated warp: operands from 16-bit smem tiles through
// ldmatrix (B stored [Kd, N] for "kn", [N, Kd] for "nk") or element by element ("fn").
template <int MODE>
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, const std::string& src) {
  using P = Host<MODE>;
  using E = typename P::E;
  using A = typename P::acc_t;
  const int Kd = a.size(1), N = b.size(1);
  TORCH_CHECK_VALUE(a.size(0) == 16 && b.size(0) == Kd && Kd % 16 == 0 && N % 16 == 0 && N <= 64,
                    "tile_gemm: a must be [16, 16 m], b [16 m, 16 n] with n <= 4");
  const at::Tensor a_ = a.to(at::kDouble).contiguous(), b_ = b.to(at::kDouble).contiguous();
  const double *pa = a_.data_ptr<double>(), *pb = b_.data_ptr<double>();
  const int la = Kd + 8, lb = (src == "nk" ? Kd : N) + 8;
  std::vector<E> ta(16 * la), tb((src == "nk" ? N : Kd) * lb);
  for (int m = 0; m < 16; ++m)
    for (int k = 0; k < Kd; ++k) ta[m * la + k] = Cvt<E>::from(pa[m * Kd + k]);
  for (int k = 0; k < Kd; ++k)
    for (int n = 0; n < N; ++n) tb[src == "nk" ? n * lb + k : k * lb + n] = Cvt<E>::from(pb[k * N + n]);
  typename P::template R<FragC<A>> acc[8];
  zero<P>(0, acc);
  if (src == "fn")
    warp_gemm<P>(0, acc, N / 8, 0, Kd, fn([&](int m, int k) { return (A)pa[m * Kd + k]; }),
                 fn([&](int k, int n) { return (A)pb[k * N + n]; }));
  else if (src == "nk")
    warp_gemm<P>(0, acc, N / 8, 0, Kd, TileA<E>{ta.data(), la}, TileNK<E>{tb.data(), lb});
  else
    warp_gemm<P>(0, acc, N / 8, 0, Kd, TileA<E>{ta.data(), la}, TileKN<E>{tb.data(), lb});
  at::Tensor d = at::zeros({16, N}, at::kDouble);
  P::lanes(0, [&](int th, int l) {
    for (int j = 0; j < N / 8; ++j)
      for (int i = 0; i < 4; ++i) d[c_row(l, i)][8 * j + c_col(l, i)] = (double)acc[j][th].x[i];
  });
  return d;
}

}  // namespace
}  // namespace hgrn2_tile

using namespace hgrn2_tile;

std::tuple<at::Tensor, OptT> hgrn2_emu_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& g, double scale, const OptT& h0,
                                           bool output_final_state, const OptT& cu_seqlens, const std::string& mode,
                                           c10::optional<bool> vec, const OptV& grid_max,
                                           c10::optional<int64_t> smem_optin) {
  Call c = make_call(q, k, v, g, scale, h0, cu_seqlens, mode_id(mode), {vec, grid_of(grid_max), smem_of(smem_optin)});
  c.o = at::empty_like(c.v);
  c.ht = at::empty({c.N, c.H, c.K, c.V}, c.states.options());
  c.run();
  return {c.o, opt(output_final_state, c.ht)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, OptT> hgrn2_emu_bwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, double scale,
    const OptT& h0, const at::Tensor& dout, const OptT& dht, const OptT& cu_seqlens, const std::string& mode,
    c10::optional<bool> vec, const OptV& grid_max, c10::optional<int64_t> smem_optin) {
  Call c = make_call(q, k, v, g, scale, h0, cu_seqlens, mode_id(mode), {vec, grid_of(grid_max), smem_of(smem_optin)});
  const auto fo = c.states.options();
  c.dout = dout.to(c.q.scalar_type()).contiguous();
  if (dht) c.dht = dht->to(fo.dtype()).contiguous();
  c.dh = at::empty_like(c.states);
  c.dq = at::empty_like(c.q), c.dk = at::empty_like(c.k), c.dv = at::empty_like(c.v), c.dg = at::empty(c.q.sizes(), fo);
  c.dh0 = at::empty({c.N, c.H, c.K, c.V}, fo);
  c.run();
  return {c.dq, c.dk, c.dv, c.dg, opt(h0.has_value(), c.dh0)};
}

at::Tensor hgrn2_tile_gemm(const at::Tensor& a, const at::Tensor& b, const std::string& mode, const std::string& src) {
  TORCH_CHECK_VALUE(src == "kn" || src == "nk" || src == "fn", "tile_gemm: src must be kn, nk or fn");
  switch (mode_id(mode)) {
    case kBf16: return gemm<kBf16>(a, b, src);
    case kF16: return gemm<kF16>(a, b, src);
    case kTf32x3: return gemm<kTf32x3>(a, b, src);
    case kTf32: return gemm<kTf32>(a, b, src);
    default: return gemm<kF64>(a, b, src);
  }
}

bool hgrn2_vec_ok(const std::vector<at::Tensor>& ts) {
  for (const at::Tensor& t : ts)
    if (t.defined() && !(t.is_contiguous() && rows_aligned(t.data_ptr(), t.numel() / t.size(-1), t.size(-1), t.element_size())))
      return false;
  return true;
}

std::tuple<bool, bool, std::vector<int64_t>, std::string> hgrn2_smem_plan(const std::string& mode, int64_t optin) {
  const int m = mode_id(mode);
  auto plan = [&](auto e) {
    using E = decltype(e);
    const SmemPlan p = smem_plan<E, float>(optin);
    return std::make_tuple(p.lean1, p.lean3, std::vector<int64_t>(p.bytes, p.bytes + 3), smem_error(p, optin, m));
  };
  TORCH_CHECK_VALUE(m == kBf16 || m == kF16 || m == kTf32x3, "hgrn2_smem_plan: mode must be bf16, fp16 or tf32x3");
  return m == kBf16 ? plan(bf16_t{}) : m == kF16 ? plan(f16_t{}) : plan(0.0f);
}

std::vector<std::tuple<std::string, std::vector<int64_t>, std::vector<int64_t>>> hgrn2_launch_grids(
    int64_t N, int64_t T, int64_t H, int64_t K, int64_t V, bool varlen, const OptV& gmax) {
  GridLog log{grid_of(gmax), {}};
  static const int offsets = 0;  // stands for cu_seqlens: the grids never read it
  const Params<float, float> p{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                               nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, varlen ? &offsets : nullptr,
                               (int)N, (int)T, (int)H, (int)K, (int)V, 1.0f, false};
  run_fwd(log, p);
  run_bwd(log, p);
  return log.out;
}
