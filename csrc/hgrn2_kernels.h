// HGRN2 GPU kernel bodies on the warp tiles of hgrn2_tile.h (fla's chunk decomposition), written once
// for the device policy (hgrn2_cuda.cu) and the host emulation (hgrn2_emu.cpp):
//   K1 k1_body   grid (K tiles x V tiles, sequences x H): the only loop over chunks. Forward: writes
//                every chunk-start state and the final state; REV: dL/dS at every chunk end (from
//                later chunks) and d initial state. State in mma accumulators, next chunk prefetched.
//   K2 k2_body   grid (chunks, H, V tiles): o = scale (q e^b) S_prev + A v; BWD: dv = (k e^{b_L-b}) G + A^T do.
//   K3 k3_body   grid (chunks, H, K tiles): dq, dk and dg of one chunk (no whole-sequence scan).
// Layout: q, k, g [rows, H, K]; v, o [rows, H, V]: B sequences of T rows, or one packed batch split by
// cu_seqlens (int32 [N + 1]); states [N, H, K, V]. Within a chunk b = cumsum g (a warp scan); every
// decay factor is e^{later - earlier} <= 1, except inside a 16-row diagonal block whose span is below
// Md::kSpan (reference products, factors up to e^span); steeper blocks go pairwise.
#pragma once
#include <string>

#include "hgrn2_tile.h"

namespace hgrn2_tile {

using hgrn2::gexp;
using hgrn2::num_chunks;

template <class In, class A>
struct Params {
  const In *q, *k, *v, *g, *dout;
  const A *h0, *dht;
  In *o, *dq, *dk, *dv;
  A *dg, *states, *dh, *ht, *dh0;  // states, dh: [chunk_slots, H, K, V]
  const int* cu;                   // [N + 1] offsets, or null: N sequences of T rows
  int N, T, H, K, V;
  A scale;
  bool vec;  // all row starts 16-byte aligned (cp.async path)
};

struct Seq {
  long bos;
  int len, c0;  // first row, length, global index of its first chunk
};

template <class Pr>
HGRN2_TD Seq seq_of(const Pr& p, int s) {
  if (!p.cu) return {(long)s * p.T, p.T, s * num_chunks(p.T)};
  int c0 = 0;
  for (int i = 0; i < s; ++i) c0 += num_chunks(p.cu[i + 1] - p.cu[i]);
  return {p.cu[s], p.cu[s + 1] - p.cu[s], c0};
}

// Sequence and chunk of global chunk gc; false past the last chunk.
template <class Pr>
HGRN2_TD bool chunk_of(const Pr& p, int gc, Seq& sq, int& n) {
  if (!p.cu) {
    const int nc = num_chunks(p.T), s = gc / nc;
    n = gc % nc, sq = {(long)s * p.T, p.T, s * nc};
    return s < p.N;
  }
  for (int s = 0, c0 = 0; s < p.N; ++s) {
    const int len = p.cu[s + 1] - p.cu[s], nc = num_chunks(len);
    if (gc < c0 + nc) {
      n = gc - c0, sq = {p.cu[s], len, c0};
      return true;
    }
    c0 += nc;
  }
  return false;
}

// Chunk slots of the states / dh workspaces and of the chunk grids (an upper bound under cu_seqlens,
// where p.T is the packed length, so the host never reads the offsets).
inline int chunk_slots(bool varlen, int N, int T) { return varlen ? T / kC + N : N * num_chunks(T); }

constexpr int kLE = kBK + 8;  // row stride of 16-bit / input tiles (16-byte rows, ldmatrix conflict-free)
constexpr int kLF = kBK + 4;  // row stride of accumulator-type tiles
HGRN2_TD int round_up(int x, int m) { return (x + m - 1) / m * m; }
HGRN2_TD int imin(int a, int b) { return a < b ? a : b; }

// Whether every row of a row-major [rows, D] array of es-byte elements at p starts 16-byte aligned, and
// so every 16-byte piece cp.async copies from it (row starts plus multiples of kBK = kBV = 64 columns).
// The kernels read q, k, g, do as rows of K (row t H + h), v, do as rows of V, and the fp32 states and
// dh [slots, H, K, V] as rows of V: aligned iff p is and, past one row, D es is a multiple of 16.
inline bool rows_aligned(const void* p, long rows, long D, int es) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (rows <= 1 || D * es % 16 == 0);
}

// Shared memory of each kernel (bytes): E tiles [kC][kLE], A tiles [kC][kLF], per-column arrays of kBK.
// LEAN variants (for devices with less shared memory per block): K1 single-buffers its chunk loads; K3
// loads q, k, g after its V loop, into the V loop's tiles.
template <class E, class A> constexpr size_t e_tile() { return sizeof(E) * kC * kLE; }
template <class E, class A> constexpr size_t a_tile() { return sizeof(A) * kC * kLF; }
template <class E, class A> constexpr size_t k1_smem(bool lean) { return (lean ? 3 : 6) * e_tile<E, A>() + a_tile<E, A>(); }
template <class E, class A> constexpr size_t k2_smem() { return 3 * e_tile<E, A>() + 2 * a_tile<E, A>() + 2 * kBK * sizeof(A); }
template <class E, class A> constexpr size_t k3_smem(bool lean) {
  return (lean ? 2 : 4) * e_tile<E, A>() + 3 * a_tile<E, A>() + 5 * kBK * sizeof(A);
}

// The least opt-in shared memory per block of the archs with bf16 mma (cudaDevAttrMaxSharedMemoryPerBlockOptin:
// sm_86, sm_89, sm_120 101,376 B; sm_80, sm_87 166,912 B; sm_90, sm_100 232,448 B). A LEAN variant exists
// (is compiled) only for a kernel whose full variant needs more.
constexpr size_t kSmemMin = 101376;
template <class E, class A> constexpr bool has_lean1() { return k1_smem<E, A>(false) > kSmemMin; }
template <class E, class A> constexpr bool has_lean3() { return k3_smem<E, A>(false) > kSmemMin; }

// The variants that run on a device allowing `optin` bytes per block and their bytes: the full ones where
// they fit, else the lean ones. bytes[i] > optin: kernel K(i + 1) cannot run there.
struct SmemPlan {
  bool lean1, lean3;
  size_t bytes[3];
};
template <class E, class A>
SmemPlan smem_plan(size_t optin) {
  const bool l1 = has_lean1<E, A>() && k1_smem<E, A>(false) > optin;
  const bool l3 = has_lean3<E, A>() && k3_smem<E, A>(false) > optin;
  return {l1, l3, {k1_smem<E, A>(l1), k2_smem<E, A>(), k3_smem<E, A>(l3)}};
}

inline const char* mode_name(int mode) { return mode == kBf16 ? "bf16" : mode == kF16 ? "fp16" : mode == kF64 ? "fp64" : "fp32"; }

// One line naming the first kernel of `plan` that exceeds `optin` and its bytes, or "" when all fit.
inline std::string smem_error(const SmemPlan& plan, size_t optin, int mode) {
  for (int i = 0; i < 3; ++i)
    if (plan.bytes[i] > optin) {
      char msg[200];
      snprintf(msg, sizeof msg, "hgrn2 cuda: kernel K%d (%s%s) needs %zu B of shared memory per block; this GPU allows %zu B",
               i + 1, mode_name(mode), (i == 0 && plan.lean1) || (i == 2 && plan.lean3) ? ", lean" : "", plan.bytes[i], optin);
      return msg;
    }
  return "";
}

// fp16 mode (kRange): the fp32 states and dh enter the mma as fp16 operands, which overflow past 65504
// (inf, then NaN). So a B column n of such a product whose largest magnitude m is 2^15 or more is scaled
// by s = 2^(14 - floor(log2 m)) into [2^14, 2^15), and the accumulator column by s before the mma and
// 1/s after: powers of two, exact in fp32, so every element keeps fp16's 11 significant bits relative to
// its column's largest (bf16 operands would keep 8 and tf32 ones run at half the fp16 rate), and columns
// below 2^15 run unscaled, bit for bit as before. s[n + kBK] = 1 / s[n].
template <class P> constexpr bool kRange = std::is_same<typename P::Md, Mode16<kF16>>::value;
HGRN2_TD void range_scale(float m, float* s, int n) {
  const uint32_t e = fbits(m) >> 23;  // biased exponent (m >= 0)
  const bool big = e >= 142 && e < 255;  // 2^15 <= m < inf
  s[n] = big ? bitsf((268u - e) << 23) : 1.0f;
  s[n + kBK] = big ? bitsf((e - 14u) << 23) : 1.0f;
}
template <class A> HGRN2_TD A amax(A m, A x) { return x > m ? x : -x > m ? -x : m; }

// acc[j] (16 x 8 n-tile j of warp w) column n *= s[n].
template <class P, int NT, class A>
HGRN2_TD void scale_cols(int w, typename P::template R<FragC<A>> (&acc)[NT], const A* s) {
  P::lanes(w, [&](int th, int l) {
    #pragma unroll
    for (int j = 0; j < NT; ++j)
      #pragma unroll
      for (int i = 0; i < 4; ++i) acc[j][th].x[i] *= s[8 * j + c_col(l, i)];
  });
}

// b[t][c] = sum_{u <= t} g[u][c] for t < kC, c < kBK: one warp per column, Hillis-Steele over lanes.
template <class P, class A, class S>
HGRN2_TD void scan_cols(A* b, const S* g, int ldg) {
  P::warps([&](int w) {
    for (int c = w; c < kBK; c += kWarps) {
      typename P::template R<A> x0, x1, y;
      P::lanes(w, [&](int th, int l) { x0[th] = tof(g[l * ldg + c]), x1[th] = tof(g[(l + 32) * ldg + c]); });
      for (int d = 1; d < 32; d <<= 1) {
        P::shfl_up(w, y, x0, d);
        P::lanes(w, [&](int th, int l) { if (l >= d) x0[th] += y[th]; });
        P::shfl_up(w, y, x1, d);
        P::lanes(w, [&](int th, int l) { if (l >= d) x1[th] += y[th]; });
      }
      P::shfl_idx(w, y, x0, 31);
      P::lanes(w, [&](int th, int l) { b[l * kLF + c] = x0[th], b[(l + 32) * kLF + c] = x1[th] + y[th]; });
    }
  });
}

// Whether 16-row block r..r+15 of b spans less than the mode's reference span in every column.
template <class P, class A>
HGRN2_TD bool ref_block(int w, const A* b, int r) {
  typename P::template R<int> ok;
  P::lanes(w, [&](int th, int l) {
    ok[th] = b[r * kLF + l] - b[(r + 15) * kLF + l] < A(P::Md::kSpan) &&
             b[r * kLF + l + 32] - b[(r + 15) * kLF + l + 32] < A(P::Md::kSpan);
  });
  return P::all(w, ok);
}

#define HGRN2_TILE_TYPES                         \
  using E = typename P::E;                       \
  using RC = typename P::template R<FragC<A>>;   \
  constexpr int kK = P::Md::kK

// K1. Forward: S <- e^{b_L} S + (k e^{b_L - b})^T v. REV: G <- e^{b_L} G + (scale q e^b)^T do, from the last chunk.
// The next chunk's loads overlap this one's work (LEAN: one buffer, loaded after it).
template <class P, bool REV, bool LEAN, class In, class A>
HGRN2_TD void k1_body(const Params<In, A>& p, int bx, int by, char* smem) {
  HGRN2_TILE_TYPES;
  const int nvt = (p.V + kBV - 1) / kBV, k0 = bx / nvt * kBK, v0 = bx % nvt * kBV;
  const int kn = imin(kBK, p.K - k0), vn = imin(kBV, p.V - v0), s = by / p.H, h = by % p.H;
  const Seq sq = seq_of(p, s);
  const int nc = num_chunks(sq.len);
  constexpr int nb = LEAN ? 1 : 2;  // buffers
  E *xb = (E*)smem, *gb = xb + nb * kC * kLE, *yb = gb + nb * kC * kLE;
  A* b = (A*)(yb + nb * kC * kLE);
  const In* xs = REV ? p.q : p.k;
  const In* ys = REV ? p.dout : p.v;
  const long sK = (long)p.H * p.K, sV = (long)p.H * p.V, KV = (long)p.K * p.V;
  auto load = [&](int st, int buf) {
    const int n = REV ? nc - 1 - st : st, L = imin(kC, sq.len - n * kC);
    const long t0 = sq.bos + (long)n * kC;
    P::load_tile(xb + buf * kC * kLE, kLE, xs + (t0 * p.H + h) * p.K + k0, sK, L, kn, kC, kBK, p.vec);
    P::load_tile(gb + buf * kC * kLE, kLE, p.g + (t0 * p.H + h) * p.K + k0, sK, L, kn, kC, kBK, p.vec);
    P::load_tile(yb + buf * kC * kLE, kLE, ys + (t0 * p.H + h) * p.V + v0, sV, L, vn, kC, kBV, p.vec);
    P::cp_commit();
  };
  RC S[8];
  const A* init = REV ? p.dht : p.h0;
  const long so = ((long)s * p.H + h) * KV;
  // Accumulator element (lane, i) of n-tile j of warp w is state element (k0 + 16w + row, v0 + 8j + col).
  auto each = [&](auto&& f) {
    P::warps([&](int w) {
      P::lanes(w, [&](int th, int l) {
        #pragma unroll
        for (int j = 0; j < 8; ++j)
          #pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int c = k0 + 16 * w + c_row(l, i), x = v0 + 8 * j + c_col(l, i);
            f(S[j][th].x[i], c, x, c < p.K && x < p.V);
          }
      });
    });
  };
  each([&](A& a, int c, int x, bool in) { a = init && in ? init[so + (long)c * p.V + x] : A(0); });
  auto put = [&](A* dst) { each([&](A& a, int c, int x, bool in) { if (in) dst[(long)c * p.V + x] = a; }); };
  if (nc > 0) load(0, 0);
  for (int st = 0; st < nc; ++st) {
    const int buf = LEAN ? 0 : st & 1, n = REV ? nc - 1 - st : st, L = imin(kC, sq.len - n * kC);
    if (!LEAN && st + 1 < nc) {
      load(st + 1, buf ^ 1);
      P::template cp_wait<1>();
    } else {
      P::template cp_wait<0>();
    }
    P::sync();
    put((REV ? p.dh : p.states) + ((long)(sq.c0 + n) * p.H + h) * KV);
    scan_cols<P>(b, gb + buf * kC * kLE, kLE);
    P::sync();
    const E* x = xb + buf * kC * kLE;
    const E* y = yb + buf * kC * kLE;
    const A* bl = b + (L - 1) * kLF;
    P::warps([&](int w) {
      const int r = 16 * w;
      P::lanes(w, [&](int th, int l) {
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
          const A d = gexp(bl[r + c_row(l, i)]);
          #pragma unroll
          for (int j = 0; j < 8; ++j) S[j][th].x[i] *= d;
        }
      });
      warp_gemm<P>(w, S, 8, 0, round_up(L, kK), fn([&](int m, int t) -> A {
                     const int c = r + m;
                     return REV ? p.scale * tof(x[t * kLE + c]) * gexp(b[t * kLF + c])
                                : tof(x[t * kLE + c]) * gexp(bl[c] - b[t * kLF + c]);
                   }),
                   TileKN<E>{y, kLE});
    });
    P::sync();
    if (LEAN && st + 1 < nc) load(st + 1, 0);
  }
  if (A* fin = REV ? p.dh0 : p.ht) put(fin + so);
}

// K2. Block row w of A (rows 16w..16w+15, columns j <= 16w+15) in warp w's accumulators; the state
// product of the same rows in O; then A goes through shared memory (over the state tile) for A v
// (forward) or A^T do (BWD).
template <class P, bool BWD, class In, class A>
HGRN2_TD void k2_body(const Params<In, A>& p, int bx, int by, int bz, char* smem) {
  HGRN2_TILE_TYPES;
  Seq sq;
  int n;
  if (!chunk_of(p, bx, sq, n)) return;
  const int h = by, v0 = bz * kBV, vn = imin(kBV, p.V - v0), L = imin(kC, sq.len - n * kC);
  const long t0 = sq.bos + (long)n * kC, sK = (long)p.H * p.K, sV = (long)p.H * p.V, KV = (long)p.K * p.V;
  E *q = (E*)smem, *kk = q + kC * kLE, *y = kk + kC * kLE;
  A *b = (A*)(y + kC * kLE), *st = b + kC * kLF, *am = st, *sc = st + kC * kLF;
  P::load_tile(y, kLE, (BWD ? p.dout : p.v) + (t0 * p.H + h) * p.V + v0, sV, L, vn, kC, kBV, p.vec);
  const A* state = (BWD ? p.dh : p.states) + ((long)(sq.c0 + n) * p.H + h) * KV + v0;
  RC Aa[8], O[8];
  P::warps([&](int w) { zero<P>(w, Aa), zero<P>(w, O); });
  for (int k0 = 0; k0 < p.K; k0 += kBK) {
    const int kn = imin(kBK, p.K - k0), kend = round_up(kn, kK);
    P::load_tile(q, kLE, p.q + (t0 * p.H + h) * p.K + k0, sK, L, kn, kC, kBK, p.vec);
    P::load_tile(kk, kLE, p.k + (t0 * p.H + h) * p.K + k0, sK, L, kn, kC, kBK, p.vec);
    P::load_tile(b, kLF, p.g + (t0 * p.H + h) * p.K + k0, sK, L, kn, kC, kBK, p.vec);
    P::load_tile(st, kLF, state + (long)k0 * p.V, p.V, kn, vn, kBK, kBV, p.vec);
    P::cp_commit();
    P::template cp_wait<0>();
    P::sync();
    if constexpr (kRange<P>)
      P::block_for(kBV, [&](int x) {
        A m = 0;
        for (int c = 0; c < kBK; ++c) m = amax(m, st[c * kLF + x]);
        range_scale(m, sc, x);
      });
    scan_cols<P>(b, b, kLF);
    P::sync();
    P::warps([&](int w) {
      const int r = 16 * w;
      const bool ref = ref_block<P>(w, b, r);
      warp_gemm<P>(w, Aa, 2 * w + 2, 0, kend,
                   fn([&](int m, int c) -> A { return tof(q[(r + m) * kLE + c]) * gexp(b[(r + m) * kLF + c] - b[r * kLF + c]); }),
                   fn([&](int c, int j) -> A {
                     return j < r || ref ? tof(kk[j * kLE + c]) * gexp(b[r * kLF + c] - b[j * kLF + c]) : A(0);
                   }));
      if (!ref)  // diagonal block pairwise
        P::lanes(w, [&](int th, int l) {
          #pragma unroll
          for (int j = 0; j < 8; ++j) {
            if (j >> 1 != w) continue;
            #pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int ii = r + c_row(l, i), jj = 8 * j + c_col(l, i);
              if (jj > ii) continue;
              A s = 0;
              for (int c = 0; c < kn; ++c)
                s += tof(q[ii * kLE + c]) * tof(kk[jj * kLE + c]) * gexp(b[ii * kLF + c] - b[jj * kLF + c]);
              Aa[j][th].x[i] += s;
            }
          }
        });
      if constexpr (kRange<P>) scale_cols<P>(w, O, sc);
      warp_gemm<P>(w, O, 8, 0, kend, fn([&](int m, int c) -> A {
                     const int i = r + m;
                     return BWD ? tof(kk[i * kLE + c]) * gexp(b[(L - 1) * kLF + c] - b[i * kLF + c])
                                : tof(q[i * kLE + c]) * gexp(b[i * kLF + c]);
                   }),
                   fn([&](int c, int x) -> A { return kRange<P> ? st[c * kLF + x] * sc[x] : st[c * kLF + x]; }));
      if constexpr (kRange<P>) scale_cols<P>(w, O, sc + kBK);
    });
    P::sync();
  }
  P::warps([&](int w) {
    P::lanes(w, [&](int th, int l) {
      #pragma unroll
      for (int j = 0; j < 8; ++j)
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int ii = 16 * w + c_row(l, i), jj = 8 * j + c_col(l, i);
          am[ii * kLF + jj] = jj <= ii ? p.scale * Aa[j][th].x[i] : A(0);
          if (!BWD) O[j][th].x[i] *= p.scale;
        }
    });
  });
  P::sync();
  In* out = (BWD ? p.dv : p.o) + (t0 * p.H + h) * p.V + v0;
  P::warps([&](int w) {
    const int r = 16 * w;
    if (BWD) warp_gemm<P>(w, O, 8, r, round_up(L, kK), TileAT<A>{am + r, kLF}, TileKN<E>{y, kLE});
    else warp_gemm<P>(w, O, 8, 0, r + 16, TileA<A>{am + r * kLF, kLF}, TileKN<E>{y, kLE});
    P::lanes(w, [&](int th, int l) {
      #pragma unroll
      for (int j = 0; j < 8; ++j)
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int t = r + c_row(l, i), x = 8 * j + c_col(l, i);
          if (t < L && x < vn) out[t * sV + x] = conv<In>(O[j][th].x[i]);
        }
    });
  });
}

// K3. dA = scale do v^T, dq_inter = scale e^b (do S_prev^T), dk_inter = e^{b_L - b} (v G^T), over the
// V tiles; then dq += dA (k e^{b_r - b}) e^{b - b_r} by query block (reference r = first row) and
// dk += dA^T (q e^{b - b_e}) e^{b_e - b} by key block (e = last row); dg = reverse cumsum of
// q dq - k dk + e^{b_L} sum_v S_prev G + sum_j k_j dk_inter_j (the later chunks and the final state).
// Tiles: q, k, do, v (E) and b, sp, gs (A); after the V loop dA goes over do + v, and W (the dg terms
// by row, first k dk_inter) over sp. LEAN: do, v | sp, gs in the V loop, then q, k | b, dA, W over them.
template <class P, bool LEAN, class In, class A>
HGRN2_TD void k3_body(const Params<In, A>& p, int bx, int by, int bz, char* smem) {
  HGRN2_TILE_TYPES;
  Seq sq;
  int n;
  if (!chunk_of(p, bx, sq, n)) return;
  const int h = by, k0 = bz * kBK, kn = imin(kBK, p.K - k0), L = imin(kC, sq.len - n * kC);
  const long t0 = sq.bos + (long)n * kC, sK = (long)p.H * p.K, sV = (long)p.H * p.V, KV = (long)p.K * p.V;
  E *q = (E*)smem, *kk = q + kC * kLE, *dO = LEAN ? q : kk + kC * kLE, *v = dO + kC * kLE;
  A *b = (A*)(q + (LEAN ? 2 : 4) * kC * kLE), *sp = b + (LEAN ? 0 : kC * kLF), *gs = sp + kC * kLF;
  A *da = LEAN ? gs : (A*)dO, *W = LEAN ? gs + kC * kLF : sp, *dgs = b + 3 * kC * kLF, *sc = dgs + kBK;
  const long ko = (t0 * p.H + h) * p.K + k0;
  auto load_qkg = [&] {
    P::load_tile(q, kLE, p.q + ko, sK, L, kn, kC, kBK, p.vec);
    P::load_tile(kk, kLE, p.k + ko, sK, L, kn, kC, kBK, p.vec);
    P::load_tile(b, kLF, p.g + ko, sK, L, kn, kC, kBK, p.vec);
  };
  if (!LEAN) load_qkg();
  P::block_for(kBK, [&](int c) { dgs[c] = 0; });
  const long so = ((long)(sq.c0 + n) * p.H + h) * KV + (long)k0 * p.V;
  RC DA[8], DQ[8], DK[8];
  P::warps([&](int w) { zero<P>(w, DA), zero<P>(w, DQ), zero<P>(w, DK); });
  for (int v0 = 0; v0 < p.V; v0 += kBV) {
    const int vn = imin(kBV, p.V - v0), vend = round_up(vn, kK);
    P::load_tile(dO, kLE, p.dout + (t0 * p.H + h) * p.V + v0, sV, L, vn, kC, kBV, p.vec);
    P::load_tile(v, kLE, p.v + (t0 * p.H + h) * p.V + v0, sV, L, vn, kC, kBV, p.vec);
    P::load_tile(sp, kLF, p.states + so + v0, p.V, kn, vn, kBK, kBV, p.vec);
    P::load_tile(gs, kLF, p.dh + so + v0, p.V, kn, vn, kBK, kBV, p.vec);
    P::cp_commit();
    P::template cp_wait<0>();
    P::sync();
    if constexpr (kRange<P>) {
      P::block_for(2 * kBK, [&](int i) {
        const int c = i % kBK, t = i / kBK;
        const A* row = (t ? gs : sp) + c * kLF;
        A m = 0;
        for (int x = 0; x < kBV; ++x) m = amax(m, row[x]);
        range_scale(m, sc + 2 * kBK * t, c);
      });
      P::sync();
    }
    P::warps([&](int w) {
      const int r = 16 * w;
      warp_gemm<P>(w, DA, 2 * w + 2, 0, vend, TileA<E>{dO + r * kLE, kLE}, TileNK<E>{v, kLE});
      // B(x, c) = S_prev[c][x] and G[c][x], scaled by row c in fp16 mode (range_scale).
      auto state = [&](auto& acc, const A* st, const A* s, const E* a) {
        if constexpr (kRange<P>) scale_cols<P>(w, acc, s);
        warp_gemm<P>(w, acc, 8, 0, vend, TileA<E>{a + r * kLE, kLE},
                     fn([&](int x, int c) -> A { return kRange<P> ? st[c * kLF + x] * s[c] : st[c * kLF + x]; }));
        if constexpr (kRange<P>) scale_cols<P>(w, acc, s + kBK);
      };
      state(DQ, sp, sc, dO);
      state(DK, gs, sc + 2 * kBK, v);
    });
    P::block_for(kBK, [&](int c) {
      A s = 0;
      for (int x = 0; x < vn; ++x) s += sp[c * kLF + x] * gs[c * kLF + x];
      dgs[c] += s;
    });
    P::sync();
  }
  if (LEAN) {
    load_qkg();
    P::cp_commit();
    P::template cp_wait<0>();
    P::sync();
  }
  scan_cols<P>(b, b, kLF);
  P::sync();
  const A* bl = b + (L - 1) * kLF;
  P::warps([&](int w) {
    P::lanes(w, [&](int th, int l) {
      #pragma unroll
      for (int j = 0; j < 8; ++j)
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int ii = 16 * w + c_row(l, i), c = 8 * j + c_col(l, i);
          da[ii * kLF + c] = c <= ii ? p.scale * DA[j][th].x[i] : A(0);
          DA[j][th].x[i] = 0;
          DQ[j][th].x[i] *= p.scale * gexp(b[ii * kLF + c]);
          DK[j][th].x[i] *= gexp(bl[c] - b[ii * kLF + c]);
          W[ii * kLF + c] = tof(kk[ii * kLE + c]) * DK[j][th].x[i];
        }
    });
  });
  P::sync();
  P::block_for(kBK, [&](int c) {  // dgs: the carry into the chunk's last row
    A carry = gexp(bl[c]) * dgs[c];
    for (int i = 0; i < L; ++i) carry += W[i * kLF + c];
    dgs[c] = carry;
  });
  P::sync();
  P::warps([&](int w) {
    const int r = 16 * w, e = r + 15;
    const bool ref = ref_block<P>(w, b, r);
    warp_gemm<P>(w, DA, 8, 0, r + 16, TileA<A>{da + r * kLF, kLF}, fn([&](int j, int c) -> A {
                   return j < r || ref ? tof(kk[j * kLE + c]) * gexp(b[r * kLF + c] - b[j * kLF + c]) : A(0);
                 }));
    P::lanes(w, [&](int th, int l) {
      #pragma unroll
      for (int j = 0; j < 8; ++j)
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int ii = r + c_row(l, i), c = 8 * j + c_col(l, i);
          A s = gexp(b[ii * kLF + c] - b[r * kLF + c]) * DA[j][th].x[i];
          if (!ref)
            for (int jj = r; jj <= ii; ++jj)
              s += da[ii * kLF + jj] * tof(kk[jj * kLE + c]) * gexp(b[ii * kLF + c] - b[jj * kLF + c]);
          DQ[j][th].x[i] += s;
          DA[j][th].x[i] = 0;
        }
    });
    warp_gemm<P>(w, DA, 8, r, round_up(L, kK), TileAT<A>{da + r, kLF}, fn([&](int i, int c) -> A {
                   return i > e || ref ? tof(q[i * kLE + c]) * gexp(b[i * kLF + c] - b[e * kLF + c]) : A(0);
                 }));
    P::lanes(w, [&](int th, int l) {
      #pragma unroll
      for (int j = 0; j < 8; ++j)
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int jj = r + c_row(l, i), c = 8 * j + c_col(l, i);
          A s = gexp(b[e * kLF + c] - b[jj * kLF + c]) * DA[j][th].x[i];
          if (!ref)
            for (int ii = jj; ii <= e; ++ii)
              s += da[ii * kLF + jj] * tof(q[ii * kLE + c]) * gexp(b[ii * kLF + c] - b[jj * kLF + c]);
          const A dq = DQ[j][th].x[i], dk = DK[j][th].x[i] + s;
          W[jj * kLF + c] = tof(q[jj * kLE + c]) * dq - tof(kk[jj * kLE + c]) * dk;
          if (jj < L && c < kn) {
            p.dq[ko + jj * sK + c] = conv<In>(dq);
            p.dk[ko + jj * sK + c] = conv<In>(dk);
          }
        }
    });
  });
  P::sync();
  P::block_for(kn, [&](int c) {
    A carry = dgs[c];
    for (int i = L - 1; i >= 0; --i) {
      carry += W[i * kLF + c];
      p.dg[ko + i * sK + c] = carry;
    }
  });
}

struct Grid {
  int x, y, z;
};

// Launch limits of every CUDA arch since sm_30: gridDim.x <= 2^31 - 1, gridDim.y and gridDim.z <= 65535.
constexpr Grid kGridMax{2147483647, 65535, 65535};

// The launch grid of a kernel's grid g (whose y = N H in K1 passes 65535 past 4095 sequences at H = 16):
// g itself where it fits `max`, else g's blocks numbered x fastest, i = x + g.x (y + g.y z), laid out the
// same way over a grid within `max` (unfold maps them back). {0, 0, 0} where even that does not fit.
inline Grid fold(const Grid& g, const Grid& max) {
  if (g.x <= max.x && g.y <= max.y && g.z <= max.z) return g;
  const long n = (long)g.x * g.y * g.z, X = n < max.x ? n : max.x, Y = (n + X - 1) / X < max.y ? (n + X - 1) / X : max.y;
  const long Z = (n + X * Y - 1) / (X * Y);
  return Z <= max.z ? Grid{(int)X, (int)Y, (int)Z} : Grid{0, 0, 0};
}

// Block (x, y, z) of grid g run by block (bx, by, bz) of its launch grid l = fold(g, ...); false for the
// blocks of l past g's last.
HGRN2_TD bool unfold(const Grid& g, const Grid& l, int bx, int by, int bz, int& x, int& y, int& z) {
  const long i = bx + (long)l.x * (by + (long)l.y * bz);
  x = (int)(i % g.x), y = (int)(i / g.x % g.y), z = (int)(i / ((long)g.x * g.y));
  return z < g.z;
}

// The launch sequence, shared by the CUDA launcher and the emulator: Launch::k1<REV>(grid),
// k2<BWD>(grid), k3(grid) run the kernels on its Params (grids as the kernels see them; the launcher
// folds them) and return an error message or null.
template <class Launch, class Pr>
const char* run_fwd(Launch& L, const Pr& p) {
  const int nkt = (p.K + kBK - 1) / kBK, nvt = (p.V + kBV - 1) / kBV;
  if (const char* e = L.template k1<false>(Grid{nkt * nvt, p.N * p.H, 1})) return e;
  return L.template k2<false>(Grid{chunk_slots(p.cu != nullptr, p.N, p.T), p.H, nvt});
}

template <class Launch, class Pr>
const char* run_bwd(Launch& L, const Pr& p) {
  const int nkt = (p.K + kBK - 1) / kBK, nvt = (p.V + kBV - 1) / kBV;
  if (const char* e = L.template k1<false>(Grid{nkt * nvt, p.N * p.H, 1})) return e;
  if (const char* e = L.template k1<true>(Grid{nkt * nvt, p.N * p.H, 1})) return e;
  if (const char* e = L.template k2<true>(Grid{chunk_slots(p.cu != nullptr, p.N, p.T), p.H, nvt})) return e;
  return L.k3(Grid{chunk_slots(p.cu != nullptr, p.N, p.T), p.H, nkt});
}

}  // namespace hgrn2_tile
