// Batched INT4 matmul with AVX512-BF16 dot products (vdpbf16ps): the layout and the arithmetic
// of kernel.cpp, two multiply-adds per fp32 lane and instruction instead of one.
//
// Weight layout: the "batched" one (engines.int4.layout): uint8 [N/16, K/2, 16]; byte c of k-pair
// t in column block b holds column 16b + c, input k = 2t in its low nibble and 2t + 1 in its high
// nibble. Widened to 32-bit lanes and looked up, 16 bytes give one vdpbf16ps operand: lane c holds
// the bf16 of q - 8 for k = 2t (low half) and k = 2t + 1 (high half) of column c.
//
// Arithmetic, per output element and group g of input columns (w = (q - 8) * s + z), as kernel.cpp:
//     y += s_g * sum_k x_k (q_k - 8)  +  z_g * sum_k x_k
// q - 8 (-8..7) is exact in bf16 and x is bf16, so every product is exact in fp32; vdpbf16ps adds a
// k-pair's two products to the fp32 accumulator, k-pairs ascending inside a group, groups
// ascending. Every row of every batch size goes through the same instructions in the same order
// (threads split columns, never k), so a row's result does not depend on the other rows of the
// batch nor on the thread count. Each group's codes are unpacked once per 64 output columns into
// an L1 buffer and reused for every row (below kRows rows: straight into registers, the same
// operations).
//
// Needs AVX512-BF16, AVX512-BW and AVX512-VL (Intel Cooper Lake / Sapphire Rapids, AMD Zen 4 and later);
// int4_dot_available() says whether the CPU has them. The functions carry their ISA as target
// attributes, so the library still loads on a CPU without them.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace {

constexpr int kCols = 16;   // output columns per zmm
constexpr int kMaxBlk = 4;  // column blocks per tile (64 columns)
constexpr int kRows = 4;    // rows per register tile: 4 x 4 accumulators
constexpr int kTileCols = kMaxBlk * kCols;

#define DOT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

bool cpu_has_bf16_dot() {
  unsigned a, b, c, d;
  __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
  if (a < 7) return false;
  __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
  const bool avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
  __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(1));
  const bool avx512bf16 = (a >> 5) & 1;
  return avx512f && avx512bw && avx512vl && avx512bf16;
}

// bf16 bits of q - 8 for q = 0..15, twice over (32 words: vpermw reads 5 bits of each index)
DOT_TARGET inline __m512i code_table() {
  alignas(64) static const uint16_t bf16[32] = {
      0xC100, 0xC0E0, 0xC0C0, 0xC0A0, 0xC080, 0xC040, 0xC000, 0xBF80, 0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0,
      0xC100, 0xC0E0, 0xC0C0, 0xC0A0, 0xC080, 0xC040, 0xC000, 0xBF80, 0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0};
  return _mm512_load_si512(bf16);
}

// 16 bytes of one k-pair of a block -> 16 lanes of (bf16(q_2t - 8), bf16(q_2t+1 - 8)). Byte b widened
// to a dword: b | b << 12 puts b's low nibble in the low word's 4 low bits (bit 4, b's bit 4, picks
// the table's second copy) and its high nibble in the high word's; one vpermw looks both up.
DOT_TARGET inline __m512i unpack_pair(const uint8_t* src, __m512i table) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  return _mm512_permutexvar_epi16(_mm512_or_si512(v, _mm512_slli_epi32(v, 12)), table);
}

DOT_TARGET inline void scale_zero(const at::BFloat16* sz, __m512* s, __m512* z) {
  // scales_and_zeros[g, n, 0/1] for 16 columns: 32-bit lane = scale (low half) | zero (high half)
  const __m512i v = _mm512_loadu_si512(sz);
  *s = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  *z = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// total[i][j] += s_j * acc[i][j] + z_j * xsum_i (one group's epilogue)
template <int R, int NB>
DOT_TARGET inline void finish_group(__m512 (&acc)[R][NB], float* total, const __m512* s, const __m512* z,
                                    const float* xsum, int64_t ldsum) {
  for (int i = 0; i < R; ++i) {
    const __m512 xs = _mm512_set1_ps(xsum[i * ldsum]);
    for (int j = 0; j < NB; ++j) {
      float* t = total + i * kTileCols + j * kCols;
      __m512 v = _mm512_loadu_ps(t);
      v = _mm512_fmadd_ps(acc[i][j], s[j], v);
      v = _mm512_fmadd_ps(xs, z[j], v);
      _mm512_storeu_ps(t, v);
    }
  }
}

// One group for R rows from the unpacked buffer bbuf [pairs][64 columns] (32-bit lanes).
// x: bf16 pairs of row 0 at this group (ldx pairs per row).
template <int R, int NB>
DOT_TARGET inline void tile(const uint32_t* x, int64_t ldx, const uint32_t* bbuf, int pairs, float* total,
                            const __m512* s, const __m512* z, const float* xsum, int64_t ldsum) {
  __m512 acc[R][NB];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int t = 0; t < pairs; ++t) {
    __m512i b[NB];
    for (int j = 0; j < NB; ++j) b[j] = _mm512_load_si512(bbuf + t * kTileCols + j * kCols);
    for (int i = 0; i < R; ++i) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[i * ldx + t]));
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], a, (__m512bh)b[j]);
    }
  }
  finish_group<R, NB>(acc, total, s, z, xsum, ldsum);
}

// The same group and rows with the codes unpacked straight into registers (few rows: no buffer).
template <int R, int NB>
DOT_TARGET inline void direct_tile(const uint32_t* x, int64_t ldx, const uint8_t* src, int64_t ldsrc, int pairs,
                                   float* total, const __m512* s, const __m512* z, const float* xsum, int64_t ldsum) {
  const __m512i table = code_table();
  __m512 acc[R][NB];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int t = 0; t < pairs; ++t) {
    __m512i b[NB];
    for (int j = 0; j < NB; ++j) b[j] = unpack_pair(src + j * ldsrc + t * kCols, table);
    for (int i = 0; i < R; ++i) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[i * ldx + t]));
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], a, (__m512bh)b[j]);
    }
  }
  finish_group<R, NB>(acc, total, s, z, xsum, ldsum);
}

template <int NB>
DOT_TARGET inline void rows_tile(int r, const uint32_t* x, int64_t ldx, const uint32_t* bbuf, int pairs,
                                 float* total, const __m512* s, const __m512* z, const float* xsum, int64_t ldsum) {
  switch (r) {
    case 4: tile<4, NB>(x, ldx, bbuf, pairs, total, s, z, xsum, ldsum); break;
    case 3: tile<3, NB>(x, ldx, bbuf, pairs, total, s, z, xsum, ldsum); break;
    case 2: tile<2, NB>(x, ldx, bbuf, pairs, total, s, z, xsum, ldsum); break;
    default: tile<1, NB>(x, ldx, bbuf, pairs, total, s, z, xsum, ldsum); break;
  }
}

template <int NB>
DOT_TARGET inline void direct_rows(int r, const uint32_t* x, int64_t ldx, const uint8_t* src, int64_t ldsrc,
                                   int pairs, float* total, const __m512* s, const __m512* z, const float* xsum,
                                   int64_t ldsum) {
  switch (r) {
    case 4: direct_tile<4, NB>(x, ldx, src, ldsrc, pairs, total, s, z, xsum, ldsum); break;
    case 3: direct_tile<3, NB>(x, ldx, src, ldsrc, pairs, total, s, z, xsum, ldsum); break;
    case 2: direct_tile<2, NB>(x, ldx, src, ldsrc, pairs, total, s, z, xsum, ldsum); break;
    default: direct_tile<1, NB>(x, ldx, src, ldsrc, pairs, total, s, z, xsum, ldsum); break;
  }
}

// Per row and group of rows [m0, m1): the fp32 sum of the group's bf16 activations, 16 lanes then
// one fixed reduction (gs a multiple of 16; else k ascending): the same order for every row of
// every batch size.
DOT_TARGET inline float group_sum(const uint16_t* xb, int gs) {
  if (gs % kCols != 0) {
    float acc = 0.f;
    for (int k = 0; k < gs; ++k) acc += at::BFloat16(xb[k], at::BFloat16::from_bits());
    return acc;
  }
  __m512 acc = _mm512_setzero_ps();
  for (int k = 0; k < gs; k += kCols) {
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + k)));
    acc = _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
  }
  return _mm512_reduce_add_ps(acc);
}

DOT_TARGET void row_sums(const at::BFloat16* x, int64_t m0, int64_t m1, int64_t K, int gs, float* xsum) {
  const int64_t G = K / gs;
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t g = 0; g < G; ++g)
      xsum[m * G + g] = group_sum(reinterpret_cast<const uint16_t*>(x + m * K + g * gs), gs);
}

// fp32 rows [m0, m1) rounded to bf16 into xb as x.to(bf16) rounds them (nearest even; a NaN becomes
// 0x7FC0), then their group sums
DOT_TARGET void round_rows(const float* x, int64_t m0, int64_t m1, int64_t K, int gs, at::BFloat16* xb,
                           float* xsum) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF);
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF), inf = _mm512_set1_epi32(0x7F800000);
  const __m512i qnan = _mm512_set1_epi32(0x7FC0);
  uint16_t* out = reinterpret_cast<uint16_t*>(xb);
  const uint32_t* in = reinterpret_cast<const uint32_t*>(x);
  for (int64_t i = m0 * K; i < m1 * K; i += kCols) {
    const int64_t n = std::min<int64_t>(kCols, m1 * K - i);
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    const __m512i u = _mm512_maskz_loadu_epi32(mask, in + i);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, bias)), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    r = _mm512_mask_mov_epi32(r, nan, qnan);
    _mm256_mask_storeu_epi16(out + i, mask, _mm512_cvtepi32_epi16(r));
  }
  row_sums(xb, m0, m1, K, gs, xsum);
}

// The fp32 sums of nb column blocks from block blk0 on, for all M rows: total [M][64].
DOT_TARGET void column_tile(const uint32_t* x, int64_t M, int64_t K, const uint8_t* w, const at::BFloat16* sz,
                            int64_t N, int gs, const float* xsum, int64_t blk0, int nb, float* total,
                            uint32_t* bbuf) {
  const int64_t G = K / gs, ldx = K / 2;
  const int pairs = gs / 2;
  std::fill(total, total + M * kTileCols, 0.f);
  const __m512i table = code_table();
  const int64_t ldsrc = (K / 2) * kCols;  // bytes from one column block to the next
  for (int64_t g = 0; g < G; ++g) {
    __m512 s[kMaxBlk], z[kMaxBlk];
    for (int j = 0; j < nb; ++j) scale_zero(sz + (g * N + (blk0 + j) * kCols) * 2, &s[j], &z[j]);
    const uint8_t* src0 = w + (blk0 * (K / 2) + g * pairs) * kCols;
    if (M <= kRows) {
      const int r = static_cast<int>(M);
      const uint32_t* xr = x + g * pairs;
      switch (nb) {
        case 4: direct_rows<4>(r, xr, ldx, src0, ldsrc, pairs, total, s, z, xsum + g, G); break;
        case 3: direct_rows<3>(r, xr, ldx, src0, ldsrc, pairs, total, s, z, xsum + g, G); break;
        case 2: direct_rows<2>(r, xr, ldx, src0, ldsrc, pairs, total, s, z, xsum + g, G); break;
        default: direct_rows<1>(r, xr, ldx, src0, ldsrc, pairs, total, s, z, xsum + g, G); break;
      }
      continue;
    }
    for (int j = 0; j < nb; ++j)
      for (int t = 0; t < pairs; ++t)
        _mm512_store_si512(bbuf + t * kTileCols + j * kCols, unpack_pair(src0 + j * ldsrc + t * kCols, table));
    for (int64_t m0 = 0; m0 < M; m0 += kRows) {
      const int r = static_cast<int>(std::min<int64_t>(kRows, M - m0));
      const uint32_t* xr = x + m0 * ldx + g * pairs;
      float* t = total + m0 * kTileCols;
      const float* xs = xsum + m0 * G + g;
      switch (nb) {
        case 4: rows_tile<4>(r, xr, ldx, bbuf, pairs, t, s, z, xs, G); break;
        case 3: rows_tile<3>(r, xr, ldx, bbuf, pairs, t, s, z, xs, G); break;
        case 2: rows_tile<2>(r, xr, ldx, bbuf, pairs, t, s, z, xs, G); break;
        default: rows_tile<1>(r, xr, ldx, bbuf, pairs, t, s, z, xs, G); break;
      }
    }
  }
}

// Column tiles [t0, t1) of the output (64 columns each), rounded once to bf16. glu: the weight's
// first N/2 columns are a gate and the last N/2 an up projection; the output [M, N/2] is
// silu(gate) * up of their fp32 sums (tile t of the gate half with tile t of the up half).
DOT_TARGET void all_columns(const uint32_t* x, int64_t M, int64_t K, const uint8_t* w, const at::BFloat16* sz,
                            int64_t N, int gs, const float* xsum, int64_t t0, int64_t t1, bool glu,
                            at::BFloat16* out) {
  const int64_t blocks = glu ? N / kCols / 2 : N / kCols, ldo = glu ? N / 2 : N;
  std::vector<float> total(static_cast<size_t>(M) * kTileCols), total_up(glu ? total.size() : 0);
  std::vector<uint32_t> bbuf_mem(static_cast<size_t>(gs / 2) * kTileCols + 16);
  uint32_t* bbuf = reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(bbuf_mem.data()) + 63) & ~uintptr_t(63));
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t blk0 = t * kMaxBlk;
    const int nb = static_cast<int>(std::min<int64_t>(kMaxBlk, blocks - blk0));
    column_tile(x, M, K, w, sz, N, gs, xsum, blk0, nb, total.data(), bbuf);
    if (glu) column_tile(x, M, K, w, sz, N, gs, xsum, blocks + blk0, nb, total_up.data(), bbuf);
    for (int64_t m = 0; m < M; ++m)
      for (int j = 0; j < nb; ++j) {
        __m512 v = _mm512_loadu_ps(total.data() + m * kTileCols + j * kCols);
        if (glu) v = abtest_int4_simd::silu_mul_ps(v, _mm512_loadu_ps(total_up.data() + m * kTileCols + j * kCols));
        const __m256bh h = _mm512_cvtneps_pbh(v);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m * ldo + (blk0 + j) * kCols), (__m256i)h);
      }
  }
}

at::Tensor dot_mm(const at::Tensor& x, const at::Tensor& w, int64_t group_size, const at::Tensor& sz, bool glu) {
  static const bool ok = cpu_has_bf16_dot();
  TORCH_CHECK(ok, "int4_mm_dot: this CPU lacks AVX512-BF16, AVX512-BW or AVX512-VL");
  TORCH_CHECK(w.dim() == 3 && w.scalar_type() == at::kByte && w.size(2) == kCols, "w must be uint8 [N/16, K/2, 16]");
  TORCH_CHECK(x.dim() == 2 && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat),
              "x must be 2-D bf16 or fp32");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0) * kCols;
  TORCH_CHECK(w.size(1) * 2 == K, "w holds K = ", w.size(1) * 2, ", x has K = ", K);
  TORCH_CHECK(group_size > 0 && group_size % 2 == 0 && group_size <= 256 && K % group_size == 0, "bad group size ",
              group_size, " for K = ", K);
  TORCH_CHECK(sz.dim() == 3 && sz.scalar_type() == at::kBFloat16 && sz.size(0) == K / group_size && sz.size(1) == N &&
                  sz.size(2) == 2,
              "scales_and_zeros must be bf16 [K/g, N, 2]");
  TORCH_CHECK(!glu || N % (2 * kCols) == 0, "int4_mm_dot_glu needs N/2 a multiple of 16, got N = ", N);
  const int gs = static_cast<int>(group_size);
  at::Tensor out = at::empty({M, glu ? N / 2 : N}, x.options().dtype(at::kBFloat16));
  if (M == 0) return out;
  const int64_t G = K / gs;
  at::Tensor xc = x.contiguous();
  at::Tensor xb = x.scalar_type() == at::kBFloat16 ? xc : at::empty({M, K}, x.options().dtype(at::kBFloat16));
  at::Tensor xsum_t = at::empty({M, G}, x.options().dtype(at::kFloat));
  float* xsum = xsum_t.data_ptr<float>();
  const at::BFloat16* xp = xb.data_ptr<at::BFloat16>();
  at::parallel_for(0, M, 64, [&](int64_t m0, int64_t m1) {
    if (x.scalar_type() == at::kBFloat16)
      row_sums(xp, m0, m1, K, gs, xsum);
    else
      round_rows(xc.data_ptr<float>(), m0, m1, K, gs, xb.data_ptr<at::BFloat16>(), xsum);
  });
  const uint32_t* xpairs = reinterpret_cast<const uint32_t*>(xp);
  at::Tensor wc = w.contiguous();
  const uint8_t* wp = wc.data_ptr<uint8_t>();
  at::Tensor szc = sz.contiguous();
  const at::BFloat16* szp = szc.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const int64_t tiles = ((glu ? N / 2 : N) / kCols + kMaxBlk - 1) / kMaxBlk;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    all_columns(xpairs, M, K, wp, szp, N, gs, xsum, t0, t1, glu, op);
  });
  return out;
}

at::Tensor int4_mm_dot(const at::Tensor& x, const at::Tensor& w, int64_t group_size, const at::Tensor& sz) {
  return dot_mm(x, w, group_size, sz, false);
}

// silu(x W_gate^T) * (x W_up^T) for a fused [gate; up] weight: [M, N/2]
at::Tensor int4_mm_dot_glu(const at::Tensor& x, const at::Tensor& w, int64_t group_size, const at::Tensor& sz) {
  return dot_mm(x, w, group_size, sz, true);
}

bool int4_dot_available() { return cpu_has_bf16_dot(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(abtest_int4, m) {
  m.def("int4_mm_dot(Tensor x, Tensor w, int group_size, Tensor scales_and_zeros) -> Tensor");  // x bf16 or fp32
  m.def("int4_mm_dot_glu(Tensor x, Tensor w, int group_size, Tensor scales_and_zeros) -> Tensor");
  m.def("int4_dot_available() -> bool", &int4_dot_available);
}

TORCH_LIBRARY_IMPL(abtest_int4, CPU, m) {
  m.impl("int4_mm_dot", &int4_mm_dot);
  m.impl("int4_mm_dot_glu", &int4_mm_dot_glu);
}
