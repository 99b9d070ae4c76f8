// The HGRN2 GPU kernels (hgrn2_kernels.h) run on the CPU by the host policy of hgrn2_tile.h: emulated
// warps, PTX fragment layouts and operand rounding. For tests (tests/test_tiles.py); -O1 keeps the
// build of these 20 kernel instantiations short.
#pragma GCC optimize("O1")
#include "hgrn2_emu.h"

#include <algorithm>
#include <string>
#include <vector>

#include "hgrn2_kernels.h"

namespace hgrn2_tile {
namespace {

// Every block gets its own shared memory, filled with NaN bytes: a read of an unwritten element shows.
template <class F>
void grid_for(const Grid& g, size_t smem, F&& body) {
  at::parallel_for(0, (int64_t)g.x * g.y * g.z, 1, [&](int64_t lo, int64_t hi) {
    std::vector<char> mem(smem);
    for (int64_t i = lo; i < hi; ++i) {
      std::fill(mem.begin(), mem.end(), (char)0xff);
      body((int)(i % g.x), (int)(i / g.x % g.y), (int)(i / ((int64_t)g.x * g.y)), mem.data());
    }
  });
}

template <int MODE, class A>
struct EmuLaunch {
  using P = Host<MODE>;
  using E = typename P::E;
  const Params<A, A>& p;
  template <bool REV>
  const char* k1(Grid g) {
    grid_for(g, k1_smem<E, A>(), [&](int x, int y, int, char* s) { k1_body<P, REV>(p, x, y, s); });
    return nullptr;
  }
  template <bool BWD>
  const char* k2(Grid g) {
    grid_for(g, k2_smem<E, A>(), [&](int x, int y, int z, char* s) { k2_body<P, BWD>(p, x, y, z, s); });
    return nullptr;
  }
  const char* k3(Grid g) {
    grid_for(g, k3_smem<E, A>(), [&](int x, int y, int z, char* s) { k3_body<P>(p, x, y, z, s); });
    return nullptr;
  }
};

int mode_id(const std::string& m) {
  if (m == "bf16") return kBf16;
  if (m == "fp16") return kF16;
  if (m == "tf32x3") return kTf32x3;
  if (m == "tf32") return kTf32;
  TORCH_CHECK_VALUE(m == "fp64", "hgrn2 emulation: mode must be bf16, fp16, tf32, tf32x3 or fp64, got ", m);
  return kF64;
}

template <class A>
A* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<A>() : nullptr; }

// One call's tensors, all contiguous in the mode's accumulator type (float, or double for fp64).
struct Call {
  at::Tensor q, k, v, g, dout, h0, dht, cu, o, dq, dk, dv, dg, states, dh, ht, dh0;
  int N, T, H, K, V;
  double scale;

  template <int MODE, class A>
  void run(bool bwd) {
    const Params<A, A> p{ptr<A>(q), ptr<A>(k), ptr<A>(v), ptr<A>(g), ptr<A>(dout), ptr<A>(h0), ptr<A>(dht),
                         ptr<A>(o), ptr<A>(dq), ptr<A>(dk), ptr<A>(dv), ptr<A>(dg), ptr<A>(states), ptr<A>(dh),
                         ptr<A>(ht), ptr<A>(dh0), cu.defined() ? cu.data_ptr<int>() : nullptr, N, T, H, K, V,
                         (A)scale, false};
    EmuLaunch<MODE, A> l{p};
    bwd ? run_bwd(l, p) : run_fwd(l, p);
  }
  void run(int mode, bool bwd) {
    switch (mode) {
      case kBf16: return run<kBf16, float>(bwd);
      case kF16: return run<kF16, float>(bwd);
      case kTf32x3: return run<kTf32x3, float>(bwd);
      default: return run<kF64, double>(bwd);
    }
  }
};

Call make_call(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, double scale,
               const OptT& h0, const OptT& cu, int mode) {
  TORCH_CHECK_VALUE(mode != kTf32, "hgrn2 emulation: the kernels run bf16, fp16, tf32x3 or fp64 (tf32: tile_gemm only)");
  const auto st = mode == kF64 ? at::kDouble : at::kFloat;
  auto cv = [st](const at::Tensor& t) { return t.to(st).contiguous(); };
  Call c;
  c.q = cv(q), c.k = cv(k), c.v = cv(v), c.g = cv(g), c.scale = scale;
  c.T = q.size(1), c.H = q.size(2), c.K = q.size(3), c.V = v.size(3), c.N = q.size(0);
  if (cu) {
    TORCH_CHECK_VALUE(q.size(0) == 1, "hgrn2: cu_seqlens needs packed inputs with B = 1, got B = ", q.size(0));
    c.cu = cu->to(at::kInt).contiguous(), c.N = cu->size(0) - 1;
  }
  if (h0) c.h0 = cv(*h0);
  c.states = at::empty({chunk_slots(cu.has_value(), c.N, c.T), c.H, c.K, c.V}, c.q.options());
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
                                           bool output_final_state, const OptT& cu_seqlens, const std::string& mode) {
  const int m = mode_id(mode);
  Call c = make_call(q, k, v, g, scale, h0, cu_seqlens, m);
  c.o = at::empty_like(c.v);
  c.ht = at::empty({c.N, c.H, c.K, c.V}, c.q.options());
  c.run(m, false);
  return {c.o, opt(output_final_state, c.ht)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, OptT> hgrn2_emu_bwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, double scale,
    const OptT& h0, const at::Tensor& dout, const OptT& dht, const OptT& cu_seqlens, const std::string& mode) {
  const int m = mode_id(mode);
  Call c = make_call(q, k, v, g, scale, h0, cu_seqlens, m);
  c.dout = dout.to(c.q.scalar_type()).contiguous();
  if (dht) c.dht = dht->to(c.q.scalar_type()).contiguous();
  c.dh = at::empty_like(c.states);
  c.dq = at::empty_like(c.q), c.dk = at::empty_like(c.k), c.dv = at::empty_like(c.v), c.dg = at::empty_like(c.g);
  c.dh0 = at::empty({c.N, c.H, c.K, c.V}, c.q.options());
  c.run(m, true);
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

std::vector<int64_t> hgrn2_tile_smem(const std::string& mode) {
  auto sizes = [](auto e) -> std::vector<int64_t> {
    using E = decltype(e);
    return {(int64_t)k1_smem<E, float>(), (int64_t)k2_smem<E, float>(), (int64_t)k3_smem<E, float>()};
  };
  const int m = mode_id(mode);
  return m == kBf16 ? sizes(bf16_t{}) : m == kF16 ? sizes(f16_t{}) : sizes(0.0f);
}
