// HGRN2 CPU chunk kernels on raw pointers. No include guard: hgrn2_cpu.cpp includes this file once
// per instruction set (inside `#pragma GCC target` regions and distinct namespaces); HGRN2_AVX512 or
// HGRN2_AVX2 is defined for those copies (C++ does not update __AVX512F__ / __AVX2__ under the pragma).
// Layout: q, k, g [B, T, H, K]; v, o [B, T, H, V]; state [B, H, K, V]; all contiguous (see Args).

enum Band { kFull, kLower, kUpper };  // nonzero part of the left factor of mm()

// W-lane vector of S (GCC vector extension; unaligned, may alias S); one lane: S itself.
template <typename S, int W>
struct Vec {
  typedef S type __attribute__((vector_size(W * sizeof(S)), aligned(sizeof(S)), may_alias));
};
template <typename S>
struct Vec<S, 1> {
  typedef S type;
};

// C[i, 0:W NV] (+)= sum_c A[i, c] B[c, 0:W NV] for rows i < m, c < n, R rows at a time with the
// accumulators in registers. kLower/kUpper: A[i, c] is zero for c > i / c < i (and is stored as such).
// AT: A is stored transposed, A[i, c] at A[c * lda + i]. Each C element sums its products in the order
// of c whatever the tile (fused on FMA targets; GCC may leave the single columns after the vector tiles
// unfused, so a width that a path tiles differently can differ in the last bit).
template <typename S, int W, int NV, int R, Band band, bool AT>
static inline void mm_rows(S* __restrict__ C, long ldc, const S* __restrict__ A, long lda, const S* __restrict__ B,
                           long ldb, int i, int n, bool acc) {
  typedef typename Vec<S, W>::type V;
  V c0[R][NV];
  for (int r = 0; r < R; ++r)
    for (int l = 0; l < NV; ++l) c0[r][l] = acc ? *(const V*)(C + (i + r) * ldc + l * W) : V{};
  const int lo = band == kUpper ? i : 0, hi = band == kLower ? std::min(n, i + R) : n;
  for (int c = lo; c < hi; ++c) {
    V b[NV];
    for (int l = 0; l < NV; ++l) b[l] = *(const V*)(B + c * ldb + l * W);
    for (int r = 0; r < R; ++r) {
      const S a = AT ? A[c * lda + i + r] : A[(i + r) * lda + c];
      for (int l = 0; l < NV; ++l) c0[r][l] += a * b[l];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int l = 0; l < NV; ++l) *(V*)(C + (i + r) * ldc + l * W) = c0[r][l];
}

// Software prefetch of the next chunk's rows while this chunk computes: step() issues a share of the
// queued cache lines once per register row-block of mm(), so that the misses overlap the FMAs instead
// of stalling on full miss queues. The [B, T, H, *] layout puts one head's rows H x K apart, a stride
// that the hardware prefetchers do not follow across pages.
template <typename S>
class Prefetcher {
 public:
  void add(const S* p, long ld, int rows, int w, bool write) {
    list_[n_++] = {p, ld, rows, w, write};
    lines_ += rows * ((w + kLine - 1) / kLine);
  }
  // Spread this chunk's lines evenly over as many steps as the previous chunk took.
  void step() { ++steps_, issue(last_ ? (lines_ + last_ - 1) / last_ : 16); }
  // Issue what is left and empty the queue (call at each chunk start, before add()).
  void restart() {
    issue(lines_);
    n_ = b_ = r_ = c_ = lines_ = 0;
    last_ = steps_, steps_ = 0;
  }

 private:
  static constexpr int kLine = 64 / sizeof(S);
  struct Rows {
    const S* p;
    long ld;
    int rows, w;
    bool write;
  };
  void issue(int lines) {
    for (; lines > 0 && b_ < n_; --lines) {
      const Rows& x = list_[b_];
      const S* a = x.p + r_ * x.ld + c_;
      x.write ? __builtin_prefetch(a, 1, 2) : __builtin_prefetch(a, 0, 2);
      if ((c_ += kLine) >= x.w && (c_ = 0, ++r_ == x.rows)) r_ = 0, ++b_;
    }
  }
  Rows list_[9];
  int n_ = 0, b_ = 0, r_ = 0, c_ = 0, lines_ = 0, steps_ = 0, last_ = 0;
};

// Register tiles of mm() for this instruction set: vectors of kVecBytes, column tiles of NV vectors x R
// rows of accumulators, widest first. The accumulators, NV vectors of B and the broadcast A value (and
// a product temporary without FMA) fit the vector registers, so the inner loop does not spill
// (tests/test_cpu_isa.py counts stack accesses in the compiled inner loops of every path):
//   AVX-512, 32 zmm: 4x4, 2x8, 1x8 (<= 16 + 4 + 1 registers; measured at 44-48% of GEMM, kept as is)
//   AVX2 + FMA, 16 ymm: 2x6, 1x8 (<= 12 + 2 + 1)
//   NEON, 32 q: as AVX-512 with 16-byte vectors (<= 16 + 4 + 1)
//   x86-64-v2 (SSE4.2, no FMA), 16 xmm: 4x2, 2x4, 1x8 (<= 8 + 4 + 2)
struct Tile {
  int nv, r;
};
#if defined(HGRN2_AVX512)
constexpr int kVecBytes = 64;
constexpr Tile kTiles[] = {{4, 4}, {2, 8}, {1, 8}};
#elif defined(HGRN2_AVX2)
constexpr int kVecBytes = 32;
constexpr Tile kTiles[] = {{2, 6}, {1, 8}};
#elif defined(__aarch64__)
constexpr int kVecBytes = 16;
constexpr Tile kTiles[] = {{4, 4}, {2, 8}, {1, 8}};
#else
constexpr int kVecBytes = 16;
constexpr Tile kTiles[] = {{4, 2}, {2, 4}, {1, 8}};
#endif

// Rows [i, m) of one column tile: blocks of R rows (stepping pf once per block), then what is left
// with R - 1, R - 2, ... rows.
template <typename S, int W, int NV, int R, Band band, bool AT>
static inline void mm_tile(S* __restrict__ C, long ldc, const S* __restrict__ A, long lda, const S* __restrict__ B,
                           long ldb, int i, int m, int n, bool acc, Prefetcher<S>* pf) {
  for (; i + R <= m; i += R) {
    mm_rows<S, W, NV, R, band, AT>(C, ldc, A, lda, B, ldb, i, n, acc);
    if (pf) pf->step();
  }
  if constexpr (R > 1)
    if (i < m) mm_tile<S, W, NV, R - 1, band, AT>(C, ldc, A, lda, B, ldb, i, m, n, acc, pf);
}

// Columns [x, w) in the tiles kTiles[I:], then single columns 4 rows at a time.
template <typename S, Band band, bool AT, size_t I = 0>
static void mm_cols(S* C, long ldc, const S* A, long lda, const S* B, long ldb, int m, int n, int x, int w,
                    bool acc, Prefetcher<S>* pf) {
  if constexpr (I < std::size(kTiles)) {
    constexpr int W = kVecBytes / sizeof(S), NV = kTiles[I].nv, R = kTiles[I].r;
    for (; x + NV * W <= w; x += NV * W)
      mm_tile<S, W, NV, R, band, AT>(C + x, ldc, A, lda, B + x, ldb, 0, m, n, acc, pf);
    mm_cols<S, band, AT, I + 1>(C, ldc, A, lda, B, ldb, m, n, x, w, acc, pf);
  } else {
    for (; x < w; ++x) mm_tile<S, 1, 1, 4, band, AT>(C + x, ldc, A, lda, B + x, ldb, 0, m, n, acc, pf);
  }
}

// C[m, w] (+)= A[m, n] B[n, w] (row strides ldc, lda, ldb; A stored transposed if AT) in the register
// tiles above; steps pf (if any) once per row block.
template <typename S, Band band = kFull, bool AT = false>
static void mm(S* C, long ldc, const S* A, long lda, const S* B, long ldb, int m, int n, int w, bool acc,
               Prefetcher<S>* pf = nullptr) {
  mm_cols<S, band, AT>(C, ldc, A, lda, B, ldb, m, n, 0, w, acc, pf);
}

// dst[c, r] = s src[r, c] for one kBlock x kBlock fp32 block, in registers (AVX-512, AVX2).
#if defined(HGRN2_AVX512)
constexpr int kBlock = 16;
static inline void transpose_block(float* dst, long ldd, const float* src, long lds, float s) {
  __m512 r[16], t[16];
  const __m512 sv = _mm512_set1_ps(s);
  for (int i = 0; i < 16; ++i) r[i] = _mm512_mul_ps(_mm512_loadu_ps(src + i * lds), sv);
  for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: (a0 b0 a1 b1), (a2 b2 a3 b3)
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4)  // r[i + j], lane l: column 4l + j of rows i..i+3
    for (int j = 0; j < 2; ++j) {
      const __m512d x = _mm512_castps_pd(t[i + j]), y = _mm512_castps_pd(t[i + j + 2]);
      r[i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
      r[i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
    }
  for (int j = 0; j < 4; ++j) {  // gather lane l of r[j], r[4 + j], r[8 + j], r[12 + j] into row 4l + j
    const __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88), u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
    const __m512 u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    const __m512 u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    _mm512_storeu_ps(dst + j * ldd, _mm512_shuffle_f32x4(u0, u2, 0x88));
    _mm512_storeu_ps(dst + (4 + j) * ldd, _mm512_shuffle_f32x4(u1, u3, 0x88));
    _mm512_storeu_ps(dst + (8 + j) * ldd, _mm512_shuffle_f32x4(u0, u2, 0xDD));
    _mm512_storeu_ps(dst + (12 + j) * ldd, _mm512_shuffle_f32x4(u1, u3, 0xDD));
  }
}
#elif defined(HGRN2_AVX2)
constexpr int kBlock = 8;
static inline void transpose_block(float* dst, long ldd, const float* src, long lds, float s) {
  __m256 r[8], t[8];
  const __m256 sv = _mm256_set1_ps(s);
  for (int i = 0; i < 8; ++i) r[i] = _mm256_mul_ps(_mm256_loadu_ps(src + i * lds), sv);
  for (int i = 0; i < 8; i += 2) {  // per 128-bit lane: (a0 b0 a1 b1), (a2 b2 a3 b3)
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4)  // r[i + j], lane l: column 4l + j of rows i..i+3
    for (int j = 0; j < 2; ++j) {
      r[i + 2 * j] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], 0x44);
      r[i + 2 * j + 1] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], 0xEE);
    }
  for (int j = 0; j < 4; ++j) {  // lane l of r[j] and r[4 + j] into row 4l + j
    _mm256_storeu_ps(dst + j * ldd, _mm256_permute2f128_ps(r[j], r[4 + j], 0x20));
    _mm256_storeu_ps(dst + (4 + j) * ldd, _mm256_permute2f128_ps(r[j], r[4 + j], 0x31));
  }
}
#endif

// dst[c, r] = s src[r, c] for r < rows, c < cols (fp32 on AVX-512 / AVX2: kBlock^2 blocks in registers).
template <typename S>
static void transpose(S* __restrict__ dst, long ldd, const S* __restrict__ src, long lds, int rows, int cols,
                      S s = 1) {
  int rb = 0, cb = 0;  // rows / cols covered by whole blocks
#if defined(HGRN2_AVX512) || defined(HGRN2_AVX2)
  if constexpr (std::is_same<S, float>::value) {
    rb = rows & -kBlock, cb = cols & -kBlock;
    for (int r = 0; r < rb; r += kBlock)
      for (int c = 0; c < cb; c += kBlock) transpose_block(dst + c * ldd + r, ldd, src + r * lds + c, lds, s);
  }
#endif
  for (int r = 0; r < rows; ++r)
    for (int c = r < rb ? cb : 0; c < cols; ++c) dst[c * ldd + r] = s * src[r * lds + c];
}

// Decay products exp(b_i - b_j) of a chunk come from its stored exp(b) and exp(-b), one exp and one
// division per element instead of an exp per product, when b >= -kFactorSpan in every column (then
// neither factor leaves the normal fp32 range); otherwise each product is its own exp.
constexpr float kFactorSpan = 80.0f;

// One chunk's buffers: [kChunk, K] rows unless noted.
template <typename S>
struct Chunk {
  const int K;
  std::vector<S> mem;
  S *q, *k, *b, *eb, *ib, *ed, *qg, *kd, *ke, *kr;  // [kChunk, K]; ib = 1 / eb
  S *qe, *qr, *qrT;                                 // [kSub, K], qrT [K, kSub]
  S *At, *dl, *dr;                                  // A transposed [kChunk, kChunk], [K], [K]
  bool factor = false;                              // decays from eb, ib (see kFactorSpan)
  Prefetcher<S> pf;                                 // the next chunk's rows, stepped by every mm() here

  explicit Chunk(int K_) : K(K_), mem((10 * (size_t)kChunk + 3 * kSub) * K + kChunk * kChunk + 2 * K) {
    S* p = mem.data();
    auto take = [&p](size_t n) { S* x = p; p += n; return x; };
    const size_t CK = (size_t)kChunk * K, SK = (size_t)kSub * K;
    q = take(CK), k = take(CK), b = take(CK), eb = take(CK), ib = take(CK), ed = take(CK), qg = take(CK);
    kd = take(CK), ke = take(CK), kr = take(CK), qe = take(SK), qr = take(SK), qrT = take(SK);
    At = take((size_t)kChunk * kChunk), dl = take(K), dr = take(K);
  }

  // dst[c] = exp(b[late, c] - b[early, c]) for the chunk rows late >= early.
  void decays(S* __restrict__ dst, int late, int early) const {
    const size_t l = (size_t)late * K, e = (size_t)early * K;
    if (factor)
#pragma omp simd
      for (int c = 0; c < K; ++c) dst[c] = eb[l + c] * ib[e + c];
    else
#pragma omp simd
      for (int c = 0; c < K; ++c) dst[c] = decay(b[l + c], b[e + c]);
  }

  // Load k and the cumulative log-decay b of chunk rows [t0, t0 + L); ed = exp(b_last - b), kd = k ed,
  // dl = exp(b_last); with_q: also q, eb = exp(b), qg = scale q eb, and ib = 1 / eb where factor holds.
  void load(const Args<S>& a, long base, int t0, int L, bool with_q = true) {
    const long st = (long)a.H * K;
    for (int i = 0; i < L; ++i) {
      const S* __restrict__ gs = a.g + base + (t0 + i) * st;
      S* bi = b + (size_t)i * K;
      if (with_q) memcpy(q + (size_t)i * K, a.q + base + (t0 + i) * st, sizeof(S) * K);
      memcpy(k + (size_t)i * K, a.k + base + (t0 + i) * st, sizeof(S) * K);
      if (i == 0)
#pragma omp simd
        for (int c = 0; c < K; ++c) bi[c] = gs[c];
      else
#pragma omp simd
        for (int c = 0; c < K; ++c) bi[c] = bi[c - K] + gs[c];
    }
    const S* __restrict__ bl = b + (size_t)(L - 1) * K;  // b is non-increasing: the last row is its minimum
    factor = with_q;
    for (int c = 0; c < K; ++c) factor &= bl[c] >= -S(kFactorSpan);
    for (int c = 0; c < K; ++c) dl[c] = gexp(bl[c]);
    if (with_q)
#pragma omp simd
      for (size_t e = 0; e < (size_t)L * K; ++e) {
        eb[e] = gexp(b[e]);
        ib[e] = S(1) / eb[e];
        qg[e] = a.scale * q[e] * eb[e];
      }
    for (int i = 0; i < L; ++i) {
      const size_t o = (size_t)i * K;
      decays(ed + o, L - 1, i);
#pragma omp simd
      for (int c = 0; c < K; ++c) kd[o + c] = k[o + c] * ed[o + c];
    }
  }

  // Scaled intra-chunk attention, stored transposed: At[j][i] = A[i][j] = scale sum_c q_ic k_jc
  // exp(b_ic - b_jc) (j <= i < L, zero elsewhere), built per query sub-chunk I = [I0, I0 + IL) from the
  // reference products at r = I0 (qe/qr, ke/kr) of the keys j < J: J = I0 + IL when the decay across I
  // is below kRefSpan in every column, else J = I0 and the keys inside I go pairwise.
  // block(I0, IL, J) runs after each sub-chunk with those reference products in place.
  template <typename F>
  void intra(int L, S scale, F&& block) {
    memset(At, 0, sizeof(S) * kChunk * kChunk);
    for (int I0 = 0; I0 < L; I0 += kSub) {
      const int IL = std::min(kSub, L - I0);
      const S* __restrict__ br = b + (size_t)I0 * K;
      const S* __restrict__ be = b + (size_t)(I0 + IL - 1) * K;
      bool ref = true;
      for (int c = 0; c < K; ++c) ref &= br[c] - be[c] < S(kRefSpan);
      const int J = ref ? I0 + IL : I0;
      for (int i = 0; i < IL; ++i) {
        const size_t o = (size_t)(I0 + i) * K, oi = (size_t)i * K;
        decays(qe + oi, I0 + i, I0);
#pragma omp simd
        for (int c = 0; c < K; ++c) qr[oi + c] = q[o + c] * qe[oi + c];
      }
      transpose(qrT, kSub, qr, K, IL, K, scale);
      // Keys before the previous sub-chunk rescale their decays from the previous reference by
      // dr = e^{b_I0 - b_{I0 - kSub}} (both factors <= 1); the others get theirs directly.
      const int Jd = std::max(I0 - kSub, 0);
      decays(dr, I0, Jd);
      for (int j = 0; j < J; ++j) {
        const size_t o = (size_t)j * K;
        if (j < Jd)
#pragma omp simd
          for (int c = 0; c < K; ++c) ke[o + c] *= dr[c];
        else
          decays(ke + o, I0, j);
#pragma omp simd
        for (int c = 0; c < K; ++c) kr[o + c] = k[o + c] * ke[o + c];
      }
      mm(At + I0, kChunk, kr, K, qrT, kSub, J, K, IL, false, &pf);
      for (int j = I0; j < I0 + IL; ++j) {
        S* __restrict__ Aj = At + (size_t)j * kChunk;
        for (int i = I0; i < j; ++i) Aj[i] = 0;
        if (ref) continue;
        const S* __restrict__ kj = k + (size_t)j * K;
        const S* __restrict__ bj = b + (size_t)j * K;
        for (int i = j; i < I0 + IL; ++i) {
          const S* __restrict__ qi = q + (size_t)i * K;
          const S* __restrict__ bi = b + (size_t)i * K;
          S s = 0;
#pragma omp simd reduction(+ : s)
          for (int c = 0; c < K; ++c) s += qi[c] * kj[c] * decay(bi[c], bj[c]);
          Aj[i] = scale * s;
        }
      }
      block(I0, IL, J);
    }
  }
};

// S[K, w] <- diag(dl) S + X^T R with X [L, K] and R [L, w] (row stride ldr).
template <typename S>
static void advance(S* st, long lds, const S* dl, const S* X, const S* R, long ldr, int K, int L, int w,
                    Prefetcher<S>* pf) {
  for (int c = 0; c < K; ++c)
#pragma omp simd
    for (int x = 0; x < w; ++x) st[c * lds + x] *= dl[c];
  mm<S, kFull, true>(st, lds, X, K, R, ldr, K, L, w, true, pf);
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
    ch.pf.restart();
    if (const int Ln = std::min(kChunk, T - t0 - kChunk); Ln > 0) {
      const long sK = (long)H * K, pk = baseK + (t0 + kChunk) * sK;
      for (const S* x : {a.q, a.k, a.g}) ch.pf.add(x + pk, sK, Ln, K, false);
      ch.pf.add(vc + kChunk * sV, sV, Ln, vt, false);
      ch.pf.add(oc + kChunk * sV, sV, Ln, vt, true);
    }
    ch.load(a, baseK, t0, L);
    ch.intra(L, a.scale, [](int, int, int) {});
    mm(oc, sV, ch.qg, K, st, vt, L, K, vt, false, &ch.pf);
    mm<S, kLower, true>(oc, sV, ch.At, kChunk, vc, sV, L, L, vt, true, &ch.pf);
    advance(st, vt, ch.dl, ch.kd, vc, sV, K, L, vt, &ch.pf);
  }
  if (a.ht)
    for (int c = 0; c < K; ++c) memcpy(a.ht + ((long)bh * K + c) * V + v0, st + (size_t)c * vt, sizeof(S) * vt);
}

// Backward for one (batch, head): recompute the chunk-start states, then walk the chunks in reverse
// carrying G = dL/dS(chunk end, from later positions) and the dg reverse-cumsum carry.
template <typename S>
static void bwd_task(const Args<S>& a, int bh) {
  const int T = a.T, H = a.H, K = a.K, V = a.V, bb = bh / H, h = bh % H;
  const int NC = num_chunks(T), C = kChunk;
  const long baseK = ((long)bb * T * H + h) * K, baseV = ((long)bb * T * H + h) * V;
  const long sK = (long)H * K, sV = (long)H * V;
  const size_t KV = (size_t)K * V;
  Chunk<S> ch(K);
  std::vector<S> mem(KV * (NC + 3) + (size_t)C * V + (size_t)2 * C * K + C * C + K);
  S* states = mem.data();  // NC chunk-start states, then the final state, each transposed [V, K]
  S *G = states + KV * (NC + 1), *GT = G + KV;
  S *vT = GT + KV, *tq = vT + (size_t)C * V, *tk = tq + (size_t)C * K, *dA = tk + (size_t)C * K;
  S* carry = dA + C * C;

  // Chunk-start states, transposed: S^T <- S^T diag(dl) + v^T kd.
  if (a.h0) transpose(states, K, a.h0 + bh * KV, V, K, V);
  else memset(states, 0, sizeof(S) * KV);
  for (int n = 0; n < NC; ++n) {
    const int t0 = n * C, L = std::min(C, T - t0);
    const S* __restrict__ src = states + KV * n;
    S* __restrict__ dst = states + KV * (n + 1);
    ch.pf.restart();
    if (const int Ln = std::min(C, T - t0 - C); Ln > 0) {
      ch.pf.add(a.k + baseK + (t0 + C) * sK, sK, Ln, K, false);
      ch.pf.add(a.g + baseK + (t0 + C) * sK, sK, Ln, K, false);
      ch.pf.add(a.v + baseV + (t0 + C) * sV, sV, Ln, V, false);
    }
    ch.load(a, baseK, t0, L, false);
    for (int x = 0; x < V; ++x)
#pragma omp simd
      for (int c = 0; c < K; ++c) dst[x * K + c] = src[x * K + c] * ch.dl[c];
    mm<S, kFull, true>(dst, K, a.v + baseV + t0 * sV, sV, ch.kd, K, V, L, K, true, &ch.pf);
  }
  const S* ST = states + KV * NC;
  for (int c = 0; c < K; ++c) {
    S s = 0;
    for (int x = 0; x < V; ++x) {
      const S d = a.dht ? a.dht[bh * KV + (size_t)c * V + x] : S(0);
      G[(size_t)c * V + x] = d;
      s += ST[(size_t)x * K + c] * d;
    }
    carry[c] = s;
  }

  for (int n = NC - 1; n >= 0; --n) {
    const int t0 = n * C, L = std::min(C, T - t0);
    const S *vc = a.v + baseV + t0 * sV, *doc = a.dout + baseV + t0 * sV;
    // dq, dk (row stride sK) and dv (sV) accumulate in place in the outputs.
    S *dqc = a.dq + baseK + t0 * sK, *dkc = a.dk + baseK + t0 * sK, *dvc = a.dv + baseV + t0 * sV;
    ch.pf.restart();
    if (n > 0) {
      const long pk = baseK + (t0 - C) * sK, pv = baseV + (t0 - C) * sV;
      for (const S* x : {a.q, a.k, a.g}) ch.pf.add(x + pk, sK, C, K, false);
      for (const S* x : {a.v, a.dout}) ch.pf.add(x + pv, sV, C, V, false);
      for (const S* x : {a.dq, a.dk, a.dg}) ch.pf.add(x + pk, sK, C, K, true);
      ch.pf.add(a.dv + pv, sV, C, V, true);
    }
    ch.load(a, baseK, t0, L);
    // dA = scale do v^T (lower triangle; only the sub-chunk rows' columns j < I0 + IL are used).
    transpose(vT, C, vc, sV, L, V, a.scale);
    for (int I0 = 0; I0 < L; I0 += kSub) {
      const int IL = std::min(kSub, L - I0);
      mm(dA + (size_t)I0 * C, C, doc + I0 * sV, sV, vT, C, IL, V, I0 + IL, false, &ch.pf);
      for (int i = I0; i < I0 + IL; ++i)
        for (int j = i + 1; j < I0 + IL; ++j) dA[i * C + j] = 0;
    }
    // Inter-chunk parts: dq = scale e^b (do S_prev^T), dk = e^{b_L - b} (v G^T), dv = kd G.
    mm(dqc, sK, doc, sV, states + KV * n, K, L, V, K, false, &ch.pf);
    transpose(GT, K, G, V, K, V);
    mm(dkc, sK, vc, sV, GT, K, L, V, K, false, &ch.pf);
    for (int i = 0; i < L; ++i)
#pragma omp simd
      for (int c = 0; c < K; ++c) {
        dqc[i * sK + c] *= a.scale * ch.eb[(size_t)i * K + c];
        dkc[i * sK + c] *= ch.ed[(size_t)i * K + c];
      }
    mm(dvc, sV, ch.kd, K, G, V, L, K, V, false, &ch.pf);
    // Intra-chunk: A, and dq / dk per query sub-chunk.
    ch.intra(L, a.scale, [&](int I0, int IL, int J) {
      mm(tq, K, dA + (size_t)I0 * C, C, ch.kr, K, IL, J, K, false, &ch.pf);
      mm<S, kFull, true>(tk, K, dA + (size_t)I0 * C, C, ch.qr, K, J, IL, K, false, &ch.pf);
      for (int i = 0; i < IL; ++i)
#pragma omp simd
        for (int c = 0; c < K; ++c) dqc[(I0 + i) * sK + c] += ch.qe[(size_t)i * K + c] * tq[(size_t)i * K + c];
      for (int j = 0; j < J; ++j)
#pragma omp simd
        for (int c = 0; c < K; ++c) dkc[j * sK + c] += ch.ke[(size_t)j * K + c] * tk[(size_t)j * K + c];
      if (J > I0) return;
      for (int i = I0; i < I0 + IL; ++i) {
        const S* __restrict__ qi = ch.q + (size_t)i * K;
        const S* __restrict__ bi = ch.b + (size_t)i * K;
        S* __restrict__ dqi = dqc + i * sK;
        for (int j = I0; j <= i; ++j) {
          const S* __restrict__ kj = ch.k + (size_t)j * K;
          const S* __restrict__ bj = ch.b + (size_t)j * K;
          S* __restrict__ dkj = dkc + j * sK;
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
    mm<S, kUpper>(dvc, sV, ch.At, C, doc, sV, L, L, V, true, &ch.pf);
    advance(G, V, ch.dl, ch.qg, doc, sV, K, L, V, &ch.pf);
    // dg: reverse cumsum of q dq - k dk, seeded with the carry from later chunks.
    for (int i = L - 1; i >= 0; --i) {
      const S *qi = ch.q + (size_t)i * K, *ki = ch.k + (size_t)i * K;
      const S *dqi = dqc + i * sK, *dki = dkc + i * sK;
      S* dgo = a.dg + baseK + (t0 + i) * sK;
#pragma omp simd
      for (int c = 0; c < K; ++c) {
        carry[c] += dg_term(qi[c], dqi[c], ki[c], dki[c]);
        dgo[c] = carry[c];
      }
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
