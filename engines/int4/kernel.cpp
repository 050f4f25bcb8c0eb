// Batched INT4 matmul for AVX-512 CPUs: bf16 activations, group-wise 4-bit weights, fp32 sums.
//
// Weight layout ("batched", built by engines.int4.layout.pack): uint8 [N/16, K/2, 16]. Block b
// holds output columns 16b..16b+15; byte c of k-pair t holds column 16b + c: the code of input
// k = 2t in its low nibble, of k = 2t + 1 in its high nibble. 16 bytes widened to 32-bit lanes
// give two rows of 16 columns.
//
// Arithmetic, per output element and group g of input columns (w = (q - 8) * s + z):
//     y += s_g * sum_k x_k (q_k - 8)  +  z_g * sum_k x_k
// Products of bf16 activations and q - 8 are exact in fp32; the sums run in fp32 in a fixed
// order (k ascending inside a group, groups ascending), one row at a time, so a row's result
// does not depend on the other rows of the batch, on how rows are tiled, or on the thread count.
// Each group's codes are unpacked to fp32 once per 64 output columns into an L1 buffer and
// reused for every row of the batch (torch's _weight_int4pack_mm_for_cpu unpacks them again
// for every 4 rows). fp32 FMA, not vdpbf16ps/vpdpbusd: on the Sapphire Rapids the kernel was
// measured on, two 512-bit FMAs retire per cycle against one vdpbf16ps per two cycles.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int kCols = 16;   // output columns per zmm
constexpr int kMaxBlk = 4;  // column blocks per tile (64 columns)
constexpr int kRows = 4;    // rows per register tile
constexpr int kTileCols = kMaxBlk * kCols;

// acc[i][j] = sum_k x[i][k] * b[k][j] over one group, then total += s * acc + z * xsum
template <int R, int NB>
inline void tile(const float* x, int64_t ldx, const float* bbuf, int gs, float* total, const __m512* s,
                 const __m512* z, const float* xsum, int64_t ldsum) {
  __m512 acc[R][NB];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int k = 0; k < gs; ++k) {
    __m512 b[NB];
    for (int j = 0; j < NB; ++j) b[j] = _mm512_load_ps(bbuf + k * kTileCols + j * kCols);
    for (int i = 0; i < R; ++i) {
      __m512 a = _mm512_set1_ps(x[i * ldx + k]);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < R; ++i) {
    __m512 xs = _mm512_set1_ps(xsum[i * ldsum]);
    for (int j = 0; j < NB; ++j) {
      float* t = total + i * kTileCols + j * kCols;
      __m512 v = _mm512_loadu_ps(t);
      v = _mm512_fmadd_ps(acc[i][j], s[j], v);
      v = _mm512_fmadd_ps(xs, z[j], v);
      _mm512_storeu_ps(t, v);
    }
  }
}

template <int NB>
inline void rows_tile(int r, const float* x, int64_t ldx, const float* bbuf, int gs, float* total,
                      const __m512* s, const __m512* z, const float* xsum, int64_t ldsum) {
  switch (r) {
    case 4: tile<4, NB>(x, ldx, bbuf, gs, total, s, z, xsum, ldsum); break;
    case 3: tile<3, NB>(x, ldx, bbuf, gs, total, s, z, xsum, ldsum); break;
    case 2: tile<2, NB>(x, ldx, bbuf, gs, total, s, z, xsum, ldsum); break;
    default: tile<1, NB>(x, ldx, bbuf, gs, total, s, z, xsum, ldsum); break;
  }
}

// fp32 -> bf16 bits, round to nearest even (finite values), 16 lanes
inline __m256i to_bf16(__m512 v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
}

inline void scale_zero(const at::BFloat16* sz, __m512* s, __m512* z) {
  // scales_and_zeros[g, n, 0/1] for 16 columns: 32-bit lane = scale (low half) | zero (high half)
  __m512i v = _mm512_loadu_si512(sz);
  *s = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  *z = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// q - 8 for q = 0..15, as fp32 (vpermps reads only the low 4 bits of each index)
inline __m512 code_table() {
  return _mm512_setr_ps(-8.f, -7.f, -6.f, -5.f, -4.f, -3.f, -2.f, -1.f, 0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
}

// codes of one k-pair of a block -> q - 8 as fp32, rows k = 2t and 2t + 1
inline void unpack_pair(const uint8_t* src, __m512 table, __m512* even, __m512* odd) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  *even = _mm512_permutexvar_ps(v, table);
  *odd = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
}

// One group for at most kRows rows, codes unpacked straight into registers (no buffer): the same
// per-row operations in the same order as tile(), so the same bits.
template <int R, int NB>
inline void direct_tile(const float* x, int64_t ldx, const uint8_t* src, int64_t ldsrc, int gs, float* total,
                        const __m512* s, const __m512* z, const float* xsum, int64_t ldsum) {
  const __m512 table = code_table();
  __m512 acc[R][NB];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int t = 0; t < gs / 2; ++t) {
    __m512 e[NB], o[NB];
    for (int j = 0; j < NB; ++j) unpack_pair(src + j * ldsrc + t * kCols, table, &e[j], &o[j]);
    for (int i = 0; i < R; ++i) {
      __m512 a = _mm512_set1_ps(x[i * ldx + 2 * t]);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(a, e[j], acc[i][j]);
    }
    for (int i = 0; i < R; ++i) {
      __m512 a = _mm512_set1_ps(x[i * ldx + 2 * t + 1]);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(a, o[j], acc[i][j]);
    }
  }
  for (int i = 0; i < R; ++i) {
    __m512 xs = _mm512_set1_ps(xsum[i * ldsum]);
    for (int j = 0; j < NB; ++j) {
      float* tt = total + i * kTileCols + j * kCols;
      __m512 v = _mm512_loadu_ps(tt);
      v = _mm512_fmadd_ps(acc[i][j], s[j], v);
      v = _mm512_fmadd_ps(xs, z[j], v);
      _mm512_storeu_ps(tt, v);
    }
  }
}

template <int NB>
inline void direct_rows(int r, const float* x, int64_t ldx, const uint8_t* src, int64_t ldsrc, int gs, float* total,
                        const __m512* s, const __m512* z, const float* xsum, int64_t ldsum) {
  switch (r) {
    case 4: direct_tile<4, NB>(x, ldx, src, ldsrc, gs, total, s, z, xsum, ldsum); break;
    case 3: direct_tile<3, NB>(x, ldx, src, ldsrc, gs, total, s, z, xsum, ldsum); break;
    case 2: direct_tile<2, NB>(x, ldx, src, ldsrc, gs, total, s, z, xsum, ldsum); break;
    default: direct_tile<1, NB>(x, ldx, src, ldsrc, gs, total, s, z, xsum, ldsum); break;
  }
}

void column_tile(const float* x, int64_t M, int64_t K, const uint8_t* w, const at::BFloat16* sz, int64_t N,
                 int gs, const float* xsum, int64_t blk0, int nb, at::BFloat16* out, float* total, float* bbuf) {
  const int64_t G = K / gs;
  std::fill(total, total + M * kTileCols, 0.f);
  const __m512 table = code_table();
  const int64_t ldsrc = (K / 2) * kCols;  // bytes from one column block to the next
  for (int64_t g = 0; g < G; ++g) {
    __m512 s[kMaxBlk], z[kMaxBlk];
    for (int j = 0; j < nb; ++j) scale_zero(sz + (g * N + (blk0 + j) * kCols) * 2, &s[j], &z[j]);
    const uint8_t* src0 = w + (blk0 * (K / 2) + g * (gs / 2)) * kCols;
    if (M <= kRows) {  // one row tile: unpack into registers
      const int r = static_cast<int>(M);
      const float* xr = x + g * gs;
      const float* xs = xsum + g;
      switch (nb) {
        case 4: direct_rows<4>(r, xr, K, src0, ldsrc, gs, total, s, z, xs, G); break;
        case 3: direct_rows<3>(r, xr, K, src0, ldsrc, gs, total, s, z, xs, G); break;
        case 2: direct_rows<2>(r, xr, K, src0, ldsrc, gs, total, s, z, xs, G); break;
        default: direct_rows<1>(r, xr, K, src0, ldsrc, gs, total, s, z, xs, G); break;
      }
      continue;
    }
    for (int j = 0; j < nb; ++j) {
      const uint8_t* src = src0 + j * ldsrc;
      for (int t = 0; t < gs / 2; ++t) {
        __m512 e, o;
        unpack_pair(src + t * kCols, table, &e, &o);
        _mm512_store_ps(bbuf + (2 * t) * kTileCols + j * kCols, e);
        _mm512_store_ps(bbuf + (2 * t + 1) * kTileCols + j * kCols, o);
      }
    }
    for (int64_t m0 = 0; m0 < M; m0 += kRows) {
      const int r = static_cast<int>(std::min<int64_t>(kRows, M - m0));
      const float* xr = x + m0 * K + g * gs;
      float* t = total + m0 * kTileCols;
      const float* xs = xsum + m0 * G + g;
      switch (nb) {
        case 4: rows_tile<4>(r, xr, K, bbuf, gs, t, s, z, xs, G); break;
        case 3: rows_tile<3>(r, xr, K, bbuf, gs, t, s, z, xs, G); break;
        case 2: rows_tile<2>(r, xr, K, bbuf, gs, t, s, z, xs, G); break;
        default: rows_tile<1>(r, xr, K, bbuf, gs, t, s, z, xs, G); break;
      }
    }
  }
  for (int64_t m = 0; m < M; ++m)
    for (int j = 0; j < nb; ++j) {
      __m256i h = to_bf16(_mm512_loadu_ps(total + m * kTileCols + j * kCols));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m * N + (blk0 + j) * kCols), h);
    }
}

void check_args(const at::Tensor& w, int64_t gs, const at::Tensor& sz) {
  TORCH_CHECK(w.dim() == 3 && w.scalar_type() == at::kByte && w.size(2) == kCols, "w must be uint8 [N/16, K/2, 16]");
  const int64_t N = w.size(0) * kCols, K = w.size(1) * 2;
  TORCH_CHECK(gs > 0 && gs % 2 == 0 && gs <= 256 && K % gs == 0, "bad group size ", gs, " for K = ", K);
  TORCH_CHECK(sz.dim() == 3 && sz.scalar_type() == at::kBFloat16 && sz.size(0) == K / gs && sz.size(1) == N &&
                  sz.size(2) == 2,
              "scales_and_zeros must be bf16 [K/g, N, 2]");
}

at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& w, int64_t group_size, const at::Tensor& sz) {
  check_args(w, group_size, sz);
  TORCH_CHECK(x.dim() == 2 && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat),
              "x must be 2-D bf16 or fp32");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0) * kCols;
  TORCH_CHECK(w.size(1) * 2 == K, "w holds K = ", w.size(1) * 2, ", x has K = ", K);
  const int gs = static_cast<int>(group_size);
  at::Tensor out = at::empty({M, N}, x.options().dtype(at::kBFloat16));
  if (M == 0) return out;
  at::Tensor xf;
  if (x.scalar_type() == at::kBFloat16) {
    xf = x.to(at::kFloat).contiguous();  // exact
  } else {  // fp32 activations rounded to bf16 here (nearest even, as x.to(bf16)): one pass, not two
    at::Tensor xc = x.contiguous();
    xf = at::empty({M, K}, xc.options());
    const uint32_t* src = reinterpret_cast<const uint32_t*>(xc.data_ptr<float>());
    uint32_t* dst = reinterpret_cast<uint32_t*>(xf.data_ptr<float>());
    for (int64_t i = 0; i < M * K; ++i) {
      const uint32_t u = src[i];
      const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
      dst[i] = nan ? (u | 0x00400000u) & 0xFFFF0000u : (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    }
  }
  const int64_t G = K / gs;
  // per row and group: the sum of the activations, k ascending whatever the batch (here rather
  // than a torch reduction, whose order could depend on the shape)
  at::Tensor xsum_t = at::empty({M, G}, xf.options());
  float* xsum = xsum_t.data_ptr<float>();
  const float* xp = xf.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      float acc = 0.f;
      for (int k = 0; k < gs; ++k) acc += xp[m * K + g * gs + k];
      xsum[m * G + g] = acc;
    }
  const uint8_t* wp = w.contiguous().data_ptr<uint8_t>();
  at::Tensor szc = sz.contiguous();
  const at::BFloat16* szp = szc.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const int64_t blocks = N / kCols;
  const int64_t tiles = (blocks + kMaxBlk - 1) / kMaxBlk;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> total(static_cast<size_t>(M) * kTileCols);
    std::vector<float> bbuf_mem(static_cast<size_t>(gs) * kTileCols + 16);
    float* bbuf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(bbuf_mem.data()) + 63) & ~uintptr_t(63));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t blk0 = t * kMaxBlk;
      const int nb = static_cast<int>(std::min<int64_t>(kMaxBlk, blocks - blk0));
      column_tile(xp, M, K, wp, szp, N, gs, xsum, blk0, nb, op, total.data(), bbuf);
    }
  });
  return out;
}

// The weight as bf16 [K, N] (k-major: x @ W is one oneDNN GEMM), written into `out`:
// w = (q - 8) * s + z with one fp32 fma, rounded once to bf16 (round to nearest even).
at::Tensor int4_dequant_t(const at::Tensor& w, int64_t group_size, const at::Tensor& sz, at::Tensor out) {
  check_args(w, group_size, sz);
  const int64_t N = w.size(0) * kCols, K = w.size(1) * 2, gs = group_size;
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.is_contiguous() && out.numel() == K * N,
              "out must be a contiguous bf16 tensor of K*N elements");
  const uint8_t* wp = w.contiguous().data_ptr<uint8_t>();
  at::Tensor szc = sz.contiguous();
  const at::BFloat16* szp = szc.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const int64_t blocks = N / kCols;
  at::parallel_for(0, K / 2, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = (2 * t) / gs;
      for (int64_t b = 0; b < blocks; ++b) {
        __m512 s, z, e, o;
        scale_zero(szp + (g * N + b * kCols) * 2, &s, &z);
        unpack_pair(wp + (b * (K / 2) + t) * kCols, code_table(), &e, &o);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(op + (2 * t) * N + b * kCols), to_bf16(_mm512_fmadd_ps(e, s, z)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(op + (2 * t + 1) * N + b * kCols), to_bf16(_mm512_fmadd_ps(o, s, z)));
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(abtest_int4, m) {
  m.def("int4_mm(Tensor x, Tensor w, int group_size, Tensor scales_and_zeros) -> Tensor");  // x bf16 or fp32
  m.def("int4_dequant_t(Tensor w, int group_size, Tensor scales_and_zeros, Tensor(a!) out) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(abtest_int4, CPU, m) {
  m.impl("int4_mm", &int4_mm);
  m.impl("int4_dequant_t", &int4_dequant_t);
}
