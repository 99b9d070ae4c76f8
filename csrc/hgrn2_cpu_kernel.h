// HGRN2 CPU chunk kernels on raw pointers. No include guard: hgrn2_cpu.cpp includes this file once
// per instruction set (inside `#pragma GCC target` regions and distinct namespaces).
// Layout: q, k, g [B, T, H, K]; v, o [B, T, H, V]; state [B, H, K, V]; all contiguous (see Args).

enum Band { kFull, kLower, kUpper };  // nonzero part of the left factor of mm()

// C[i, 0:TW] (+)= sum_c A[i, c] B[c, 0:TW] for rows i < m, c < n, R rows at a time with the
// accumulators in registers. kLower/kUpper: A[i, c] is zero for c > i / c < i (and is stored as such).
template <typename S, int TW, int R, Band band>
static inline void mm_rows(S* __restrict__ C, long ldc, const S* __restrict__ A, long lda, const S* __restrict__ B,
                           long ldb, int i, int n, bool acc) {
  S c0[R][TW];
  for (int r = 0; r < R; ++r)
    for (int l = 0; l < TW; ++l) c0[r][l] = acc ? C[(i + r) * ldc + l] : S(0);
  const int lo = band == kUpper ? i : 0, hi = band == kLower ? std::min(n, i + R) : n;
  for (int c = lo; c < hi; ++c) {
    const S* __restrict__ b = B + c * ldb;
    for (int r = 0; r < R; ++r) {
      const S a = A[(i + r) * lda + c];
      for (int l = 0; l < TW; ++l) c0[r][l] += a * b[l];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int l = 0; l < TW; ++l) C[(i + r) * ldc + l] = c0[r][l];
}

template <typename S, int TW, Band band>
static inline void mm_tile(S* __restrict__ C, long ldc, const S* __restrict__ A, long lda, const S* __restrict__ B,
                           long ldb, int m, int n, bool acc) {
  int i = 0;
  for (; i + 4 <= m; i += 4) mm_rows<S, TW, 4, band>(C, ldc, A, lda, B, ldb, i, n, acc);
  for (; i < m; ++i) mm_rows<S, TW, 1, band>(C, ldc, A, lda, B, ldb, i, n, acc);
}

// C[m, w] (+)= A[m, n] B[n, w] (row strides ldc, lda, ldb).
template <typename S, Band band = kFull>
static void mm(S* C, long ldc, const S* A, long lda, const S* B, long ldb, int m, int n, int w, bool acc) {
  constexpr int TW = 256 / sizeof(S);
  int x = 0;
  for (; x + TW <= w; x += TW) mm_tile<S, TW, band>(C + x, ldc, A, lda, B + x, ldb, m, n, acc);
  for (; x + 16 <= w; x += 16) mm_tile<S, 16, band>(C + x, ldc, A, lda, B + x, ldb, m, n, acc);
  for (; x < w; ++x) mm_tile<S, 1, band>(C + x, ldc, A, lda, B + x, ldb, m, n, acc);
}

// dst[c, r] = src[r, c] for r < rows, c < cols.
template <typename S>
static void transpose(S* __restrict__ dst, long ldd, const S* __restrict__ src, long lds, int rows, int cols) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

// One chunk's buffers: [kChunk, K] rows unless noted.
template <typename S>
struct Chunk {
  std::vector<S> mem;
  S *q, *k, *b, *eb, *ed, *qg, *kd, *ke, *kr;  // [kChunk, K]
  S *qgT, *kdT, *krT;                          // [K, kChunk]
  S *qe, *qr;                                  // [kSub, K]
  S *A, *dl;                                   // [kChunk, kChunk], [K]

  explicit Chunk(int K) : mem((12 * (size_t)kChunk + 2 * kSub) * K + kChunk * kChunk + K) {
    S* p = mem.data();
    auto take = [&p](size_t n) { S* x = p; p += n; return x; };
    const size_t CK = (size_t)kChunk * K, SK = (size_t)kSub * K;
    q = take(CK), k = take(CK), b = take(CK), eb = take(CK), ed = take(CK), qg = take(CK), kd = take(CK);
    ke = take(CK), kr = take(CK), qgT = take(CK), kdT = take(CK), krT = take(CK);
    qe = take(SK), qr = take(SK), A = take((size_t)kChunk * kChunk), dl = take(K);
  }

  // Load q, k and the cumulative log-decay b of chunk rows [t0, t0 + L); eb = exp(b),
  // ed = exp(b_last - b), qg = scale q eb, kd = k ed (and their transposes), dl = exp(b_last).
  void load(const Args<S>& a, long base, int t0, int L) {
    const int K = a.K;
    const long st = (long)a.H * K;
    for (int i = 0; i < L; ++i) {
      const S* __restrict__ gs = a.g + base + (t0 + i) * st;
      S* bi = b + (size_t)i * K;
      memcpy(q + (size_t)i * K, a.q + base + (t0 + i) * st, sizeof(S) * K);
      memcpy(k + (size_t)i * K, a.k + base + (t0 + i) * st, sizeof(S) * K);
      if (i == 0)
#pragma omp simd
        for (int c = 0; c < K; ++c) bi[c] = gs[c];
      else
#pragma omp simd
        for (int c = 0; c < K; ++c) bi[c] = bi[c - K] + gs[c];
    }
    const S* __restrict__ bl = b + (size_t)(L - 1) * K;
    for (int c = 0; c < K; ++c) dl[c] = gexp(bl[c]);
    for (int i = 0; i < L; ++i) {
      const size_t o = (size_t)i * K;
#pragma omp simd
      for (int c = 0; c < K; ++c) {
        eb[o + c] = gexp(b[o + c]);
        ed[o + c] = decay(bl[c], b[o + c]);
        qg[o + c] = a.scale * q[o + c] * eb[o + c];
        kd[o + c] = k[o + c] * ed[o + c];
      }
    }
    transpose(qgT, kChunk, qg, K, L, K);
    transpose(kdT, kChunk, kd, K, L, K);
  }

  // Scaled intra-chunk attention A[i][j] = scale sum_c q_ic k_jc exp(b_ic - b_jc) (j <= i < L, zero
  // elsewhere), built per query sub-chunk I = [I0, I0 + IL): keys before I through the reference
  // products at r = I0 (qe/qr, ke/kr), keys inside I pairwise. block(I0, IL) runs after each sub-chunk
  // with those reference products in place.
  template <typename F>
  void intra(int K, int L, S scale, F&& block) {
    memset(A, 0, sizeof(S) * kChunk * kChunk);
    for (int I0 = 0; I0 < L; I0 += kSub) {
      const int IL = std::min(kSub, L - I0);
      const S* __restrict__ br = b + (size_t)I0 * K;
      for (int i = 0; i < IL; ++i) {
        const size_t o = (size_t)(I0 + i) * K, oi = (size_t)i * K;
#pragma omp simd
        for (int c = 0; c < K; ++c) {
          qe[oi + c] = decay(b[o + c], br[c]);
          qr[oi + c] = ref_q(q[o + c], b[o + c], br[c]);
        }
      }
      for (int j = 0; j < I0; ++j) {
        const size_t o = (size_t)j * K;
#pragma omp simd
        for (int c = 0; c < K; ++c) {
          ke[o + c] = decay(br[c], b[o + c]);
          kr[o + c] = ref_k(k[o + c], br[c], b[o + c]);
        }
      }
      transpose(krT, kChunk, kr, K, I0, K);
      mm(A + (size_t)I0 * kChunk, kChunk, qr, K, krT, kChunk, IL, K, I0, false);
      for (int i = I0; i < I0 + IL; ++i) {
#pragma omp simd
        for (int j = 0; j < I0; ++j) A[(size_t)i * kChunk + j] *= scale;
        const S* __restrict__ qi = q + (size_t)i * K;
        const S* __restrict__ bi = b + (size_t)i * K;
        for (int j = I0; j <= i; ++j) {
          const S* __restrict__ kj = k + (size_t)j * K;
          const S* __restrict__ bj = b + (size_t)j * K;
          S s = 0;
#pragma omp simd reduction(+ : s)
          for (int c = 0; c < K; ++c) s += qi[c] * kj[c] * decay(bi[c], bj[c]);
          A[(size_t)i * kChunk + j] = scale * s;
        }
      }
      block(I0, IL);
    }
  }
};

// S[K, w] <- diag(dl) S + X^T R with X^T = xT [K, L] (row stride kChunk) and R [L, w] (row stride ldr).
template <typename S>
static void advance(S* st, long lds, const S* dl, const S* xT, const S* R, long ldr, int K, int L, int w) {
  for (int c = 0; c < K; ++c)
#pragma omp simd
    for (int x = 0; x < w; ++x) st[c * lds + x] *= dl[c];
  mm(st, lds, xT, kChunk, R, ldr, K, L, w, true);
}

// Forward for one (batch, head, value tile [v0, v0 + vt)).
template <typename S>
static void fwd_task(const Args<S>& a, int bh, int v0, int vt) {
  const int T = a.T, H = a.H, K = a.K, V = a.V, bb = bh / H, h = bh % H;
  const long baseK = ((long)bb * T * H + h) * K, baseV = ((long)bb * T * H + h) * V + v0;
  const long sV = (long)H * V;
  Chunk<S> ch(K);
  std::vector<S> mem((size_t)K * vt);
  S* st = mem.data();
  for (int c = 0; c < K; ++c)
    for (int x = 0; x < vt; ++x) st[(size_t)c * vt + x] = a.h0 ? a.h0[((long)bh * K + c) * V + v0 + x] : S(0);
  for (int t0 = 0; t0 < T; t0 += kChunk) {
    const int L = std::min(kChunk, T - t0);
    const S* vc = a.v + baseV + t0 * sV;
    S* oc = a.o + baseV + t0 * sV;
    ch.load(a, baseK, t0, L);
    ch.intra(K, L, a.scale, [](int, int) {});
    mm(oc, sV, ch.qg, K, st, vt, L, K, vt, false);
    mm<S, kLower>(oc, sV, ch.A, kChunk, vc, sV, L, L, vt, true);
    advance(st, vt, ch.dl, ch.kdT, vc, sV, K, L, vt);
  }
  if (a.ht)
    for (int c = 0; c < K; ++c) memcpy(a.ht + ((long)bh * K + c) * V + v0, st + (size_t)c * vt, sizeof(S) * vt);
}

// Backward for one (batch, head): recompute the chunk-start states, then walk the chunks in reverse
// carrying G = dL/dS(chunk end, from later positions) and the dg reverse-cumsum carry.
template <typename S>
static void bwd_task(const Args<S>& a, int bh) {
  const int T = a.T, H = a.H, K = a.K, V = a.V, bb = bh / H, h = bh % H;
  const int NC = (T + kChunk - 1) / kChunk, C = kChunk;
  const long baseK = ((long)bb * T * H + h) * K, baseV = ((long)bb * T * H + h) * V;
  const long sK = (long)H * K, sV = (long)H * V;
  const size_t KV = (size_t)K * V;
  Chunk<S> ch(K);
  std::vector<S> mem(KV * (NC + 3) + (size_t)3 * C * V + (size_t)4 * C * K + 2 * C * C + K);
  S* states = mem.data();  // NC chunk-start states, then the final state
  S *G = states + KV * (NC + 1), *T1 = G + KV;  // T1: transposed state [V, K]
  S *vT = T1 + KV, *dvc = vT + (size_t)C * V, *dqc = dvc + (size_t)C * V, *dkc = dqc + (size_t)C * K;
  S *tq = dkc + (size_t)C * K, *tk = tq + (size_t)C * K, *dA = tk + (size_t)C * K, *dAT = dA + C * C;
  S* carry = dAT + C * C;

  for (size_t x = 0; x < KV; ++x) states[x] = a.h0 ? a.h0[bh * KV + x] : S(0);
  for (int n = 0; n < NC; ++n) {
    const int t0 = n * C, L = std::min(C, T - t0);
    ch.load(a, baseK, t0, L);
    memcpy(states + KV * (n + 1), states + KV * n, sizeof(S) * KV);
    advance(states + KV * (n + 1), V, ch.dl, ch.kdT, a.v + baseV + t0 * sV, sV, K, L, V);
  }
  const S* ST = states + KV * NC;
  for (int c = 0; c < K; ++c) {
    S s = 0;
    for (int x = 0; x < V; ++x) {
      const S d = a.dht ? a.dht[bh * KV + (size_t)c * V + x] : S(0);
      G[(size_t)c * V + x] = d;
      s += ST[(size_t)c * V + x] * d;
    }
    carry[c] = s;
  }

  for (int n = NC - 1; n >= 0; --n) {
    const int t0 = n * C, L = std::min(C, T - t0);
    const S *vc = a.v + baseV + t0 * sV, *doc = a.dout + baseV + t0 * sV;
    ch.load(a, baseK, t0, L);
    // dA = scale do v^T (lower triangle) and its transpose.
    transpose(vT, C, vc, sV, L, V);
    for (int I0 = 0; I0 < L; I0 += kSub) {
      const int IL = std::min(kSub, L - I0);
      mm(dA + (size_t)I0 * C, C, doc + I0 * sV, sV, vT, C, IL, V, I0 + IL, false);
    }
    for (int i = 0; i < L; ++i)
      for (int j = 0; j < L; ++j) dA[i * C + j] = j <= i ? a.scale * dA[i * C + j] : S(0);
    transpose(dAT, C, dA, C, L, L);
    // Inter-chunk parts: dq = scale e^b (do S_prev^T), dk = e^{b_L - b} (v G^T), dv = kd G.
    transpose(T1, K, states + KV * n, V, K, V);
    mm(dqc, K, doc, sV, T1, K, L, V, K, false);
    transpose(T1, K, G, V, K, V);
    mm(dkc, K, vc, sV, T1, K, L, V, K, false);
#pragma omp simd
    for (size_t e = 0; e < (size_t)L * K; ++e) {
      dqc[e] *= a.scale * ch.eb[e];
      dkc[e] *= ch.ed[e];
    }
    mm(dvc, V, ch.kd, K, G, V, L, K, V, false);
    // Intra-chunk: A, and dq / dk per query sub-chunk.
    ch.intra(K, L, a.scale, [&](int I0, int IL) {
      mm(tq, K, dA + (size_t)I0 * C, C, ch.kr, K, IL, I0, K, false);
      mm(tk, K, dAT + I0, C, ch.qr, K, I0, IL, K, false);
      for (int i = 0; i < IL; ++i)
#pragma omp simd
        for (int c = 0; c < K; ++c) dqc[(size_t)(I0 + i) * K + c] += ch.qe[(size_t)i * K + c] * tq[(size_t)i * K + c];
#pragma omp simd
      for (size_t e = 0; e < (size_t)I0 * K; ++e) dkc[e] += ch.ke[e] * tk[e];
      for (int i = I0; i < I0 + IL; ++i) {
        const S* __restrict__ qi = ch.q + (size_t)i * K;
        const S* __restrict__ bi = ch.b + (size_t)i * K;
        S* __restrict__ dqi = dqc + (size_t)i * K;
        for (int j = I0; j <= i; ++j) {
          const S* __restrict__ kj = ch.k + (size_t)j * K;
          const S* __restrict__ bj = ch.b + (size_t)j * K;
          S* __restrict__ dkj = dkc + (size_t)j * K;
          const S d = dA[(size_t)i * C + j];
#pragma omp simd
          for (int c = 0; c < K; ++c) {
            const S e = decay(bi[c], bj[c]);
            dqi[c] += d * kj[c] * e;
            dkj[c] += d * qi[c] * e;
          }
        }
      }
    });
    // dv += A^T do; G <- exp(b_last) G + (scale q e^b)^T do.
    transpose(dAT, C, ch.A, C, L, L);
    mm<S, kUpper>(dvc, V, dAT, C, doc, sV, L, L, V, true);
    advance(G, V, ch.dl, ch.qgT, doc, sV, K, L, V);
    // dg: reverse cumsum of q dq - k dk, seeded with the carry from later chunks.
    for (int i = L - 1; i >= 0; --i) {
      const S *qi = ch.q + (size_t)i * K, *ki = ch.k + (size_t)i * K;
      const S *dqi = dqc + (size_t)i * K, *dki = dkc + (size_t)i * K;
      S* dgo = a.dg + baseK + (t0 + i) * sK;
#pragma omp simd
      for (int c = 0; c < K; ++c) {
        carry[c] += dg_term(qi[c], dqi[c], ki[c], dki[c]);
        dgo[c] = carry[c];
      }
      memcpy(a.dq + baseK + (t0 + i) * sK, dqi, sizeof(S) * K);
      memcpy(a.dk + baseK + (t0 + i) * sK, dki, sizeof(S) * K);
      memcpy(a.dv + baseV + (t0 + i) * sV, dvc + (size_t)i * V, sizeof(S) * V);
    }
  }
  if (a.dh0) memcpy(a.dh0 + bh * KV, G, sizeof(S) * KV);
}

// Threads worth waking for this call: small problems run on the calling thread.
template <typename S>
static int threads_for(const Args<S>& a, int nthreads, int tasks) {
  return (long)a.B * a.H * a.T * a.K * a.V < (1L << 18) ? 1 : std::max(1, std::min(nthreads, tasks));
}

template <typename S>
static void run_fwd(const Args<S>& a, int nthreads) {
  const int BH = a.B * a.H;
  // Split the value dim when there are fewer (batch, head) pairs than threads.
  int nvt = 1;
  while (BH * nvt < nthreads && (a.V / (2 * nvt)) >= 16) nvt *= 2;
  const int vt = (a.V + nvt - 1) / nvt;
#pragma omp parallel for num_threads(threads_for(a, nthreads, BH * nvt)) schedule(dynamic, 1)
  for (int task = 0; task < BH * nvt; ++task) {
    const FtzScope ftz;
    const int v0 = (task % nvt) * vt;
    fwd_task(a, task / nvt, v0, std::min(vt, a.V - v0));
  }
}

template <typename S>
static void run_bwd(const Args<S>& a, int nthreads) {
  const int BH = a.B * a.H;
#pragma omp parallel for num_threads(threads_for(a, nthreads, BH)) schedule(dynamic, 1)
  for (int bh = 0; bh < BH; ++bh) {
    const FtzScope ftz;
    bwd_task(a, bh);
  }
}
