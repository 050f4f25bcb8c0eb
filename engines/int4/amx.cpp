// INT4 matmul on Intel AMX (tile registers, TDPBF16PS): bf16 activations, group-wise 4-bit
// weights dequantized to bf16 once per 32 output columns and reused for every row of the batch.
//
// Weight layout: the "batched" one (engines.int4.layout): uint8 [N/16, K/2, 16]; byte c of
// k-pair t in column block b holds column 16b + c, input k = 2t in its low nibble and 2t + 1 in
// its high nibble. That is already the order of an AMX bf16 B tile row (16 columns x 2
// consecutive k): 16 bytes widened and looked up give one 64-byte tile row.
//
// Arithmetic: w = bf16((q - 8) * s + z), one fp32 fma rounded once (round to nearest even), as in
// int4_dequant_t; then TDPBF16PS accumulates x * w in fp32 over k ascending, 32 k per step, in the
// tile accumulator. Every row of the batch goes through the same tile instructions with the same
// B tiles in the same k order, padded to 16-row tiles, so a row's result does not depend on the
// other rows of the batch (the hardware computes each element of a tile alike) nor on the
// thread count (threads split columns, never k).
//
// Needs AMX-TILE, AMX-BF16, AVX512-BF16 and AVX512-BW (Sapphire Rapids and later) and the
// kernel's permission to use tile data (arch_prctl ARCH_REQ_XCOMP_PERM, asked once per process);
// int4_amx_available() says whether both hold. The functions carry their ISA as target attributes,
// so the library still loads on a CPU without AMX.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace {

constexpr int kCols = 16;      // output columns per column block (one B tile's width)
constexpr int kKStep = 32;     // k per tile step (16 rows x 2 bf16)
constexpr int kTileRows = 16;  // rows of an A / C tile

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16")))

bool cpu_has_amx() {
  unsigned a, b, c, d;
  __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
  const bool amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
  const bool avx512bw = (b >> 30) & 1;
  __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(1));
  const bool avx512bf16 = (a >> 5) & 1;
  return amx_bf16 && amx_tile && avx512bw && avx512bf16;
}

bool amx_ready() {
  static const bool ok = [] {
    if (!cpu_has_amx()) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// GCC's tile load/store intrinsics are asm statements without a memory operand: the compiler
// may drop or move plain stores a tile load reads (a B tile just rebuilt) or loads of what a tile
// store wrote. A compiler barrier between the two orders them.
#define TILE_MEMORY_BARRIER() __asm__ __volatile__("" ::: "memory")

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tmm0-3: C (16 rows x 16 fp32), tmm4-5: A (16 rows x 32 bf16), tmm6-7: B (16 k-pairs x 16 cols x 2)
AMX_TARGET void configure_tiles() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = kTileRows;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
}

struct Dequant {
  __m512 table;       // q - 8 for q = 0..15 (vpermps reads the low 4 bits of each index)
  __m512i interleave;  // cvtne2ps_pbh(o, e) gives [e0..e15, o0..o15]; tile rows want [e0, o0, e1, o1, ...]
};

AMX_TARGET inline Dequant dequant_consts() {
  alignas(64) static const uint16_t order[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  return {_mm512_setr_ps(-8.f, -7.f, -6.f, -5.f, -4.f, -3.f, -2.f, -1.f, 0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f),
          _mm512_load_si512(order)};
}

// One B tile: k = 32 kc .. 32 kc + 31 of one column block (src: the block's first k-pair) -> 16
// rows of 64 bytes at `tile`.
AMX_TARGET inline void dequant_tile(const Dequant& d, const uint8_t* src, const at::BFloat16* sz, int64_t N, int gs,
                                    int64_t col0, int64_t kc, uint16_t* tile) {
  const int64_t g = (kc * kKStep) / gs;  // gs is a multiple of 32: one group per tile
  const __m512i v = _mm512_loadu_si512(sz + (g * N + col0) * 2);
  const __m512 s = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  const __m512 z = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  for (int r = 0; r < kTileRows; ++r) {
    const int64_t t = kc * kTileRows + r;  // k-pair
    const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + t * kCols)));
    const __m512 e = _mm512_fmadd_ps(_mm512_permutexvar_ps(c, d.table), s, z);
    const __m512 o = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(c, 4), d.table), s, z);
    // bf16 of each (round half away from zero on the magnitude: + 0x8000, keep the top half);
    // e's into the low half of each 32-bit lane, o's into the high half: [e0, o0, e1, o1, ...]
    const __m512i half = _mm512_set1_epi32(0x8000);
    const __m512i eu = _mm512_srli_epi32(_mm512_add_epi32(_mm512_castps_si512(e), half), 16);
    const __m512i ou = _mm512_add_epi32(_mm512_castps_si512(o), half);
    const __m512i pair = _mm512_ternarylogic_epi32(ou, eu, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)), 0xE4);
    _mm512_store_si512(reinterpret_cast<__m512i*>(tile + r * 32), pair);
  }
}

// Dequantize the column blocks [blk0, blk0 + nb) into B tiles: buf[kc][j] is one 1 KB tile
// (16 k-pairs x 64 bytes) for k = 32 kc .. 32 kc + 31 and column block blk0 + j.
AMX_TARGET void dequant_strip(const uint8_t* w, const at::BFloat16* sz, int64_t N, int64_t K, int gs,
                              int64_t blk0, int nb, uint16_t* buf) {
  const Dequant d = dequant_consts();
  const int64_t kchunks = K / kKStep;
  for (int j = 0; j < nb; ++j) {
    const uint8_t* src = w + (blk0 + j) * (K / 2) * kCols;
    for (int64_t kc = 0; kc < kchunks; ++kc)
      dequant_tile(d, src, sz, N, gs, (blk0 + j) * kCols, kc, buf + (kc * nb + j) * (kTileRows * 32));
  }
}

// The C tiles of up to 32 rows x 32 columns (MT x NB tiles of 16 x 16 fp32) over k ascending,
// stored into ctmp ([MT * 16 rows][NB * 16 cols], row stride 32 floats). b_tiles(kc) gives the
// step's NB B tiles (1 KB each, contiguous): rebuilt on the spot or read from a strip buffer.
template <int MT, int NB, typename BTiles>
AMX_TARGET inline void tile_products(const at::BFloat16* x, int64_t K, BTiles& b_tiles, float* ctmp) {
  _tile_zero(0);
  if constexpr (NB > 1) _tile_zero(1);
  if constexpr (MT > 1) _tile_zero(2);
  if constexpr (MT > 1 && NB > 1) _tile_zero(3);
  const int64_t lda = K * 2;  // bytes
  const int64_t kchunks = K / kKStep;
  for (int64_t kc = 0; kc < kchunks; ++kc) {
    const uint16_t* b = b_tiles(kc);
    TILE_MEMORY_BARRIER();
    _tile_loadd(4, x + kc * kKStep, lda);
    if constexpr (MT > 1) _tile_loadd(5, x + kTileRows * K + kc * kKStep, lda);
    _tile_loadd(6, b, 64);
    if constexpr (NB > 1) _tile_loadd(7, b + kTileRows * 32, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NB > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (MT > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (MT > 1 && NB > 1) _tile_dpbf16ps(3, 5, 7);
  }
  constexpr int64_t ldc = 2 * kCols * 4;
  TILE_MEMORY_BARRIER();
  _tile_stored(0, ctmp, ldc);
  if constexpr (NB > 1) _tile_stored(1, ctmp + kCols, ldc);
  if constexpr (MT > 1) _tile_stored(2, ctmp + kTileRows * 2 * kCols, ldc);
  if constexpr (MT > 1 && NB > 1) _tile_stored(3, ctmp + kTileRows * 2 * kCols + kCols, ldc);
  TILE_MEMORY_BARRIER();
}

// B tiles of a strip rebuilt beforehand (dequant_strip): buf[kc][j]
struct StripTiles {
  const uint16_t* buf;
  int nb;
  const uint16_t* operator()(int64_t kc) const { return buf + kc * nb * (kTileRows * 32); }
};

// B tiles rebuilt just before their products, in L1 (at most 32 rows: decode): the same tiles,
// products and k order as from a prebuilt strip
struct FreshTiles {
  Dequant d;
  const uint8_t* src0;  // the strip's first column block; src1 the next one
  const uint8_t* src1;
  const at::BFloat16* sz;
  int64_t N, col0;
  int gs, nb;
  alignas(64) uint16_t b[2][kTileRows * 32];

  AMX_TARGET const uint16_t* operator()(int64_t kc) {
    dequant_tile(d, src0, sz, N, gs, col0, kc, b[0]);
    if (nb > 1) dequant_tile(d, src1, sz, N, gs, col0 + kCols, kc, b[1]);
    return b[0];
  }
};

AMX_TARGET void store_rows(const float* ctmp, int rows, int nb, at::BFloat16* out, int64_t N, int64_t col0) {
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < nb; ++j) {
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(ctmp + i * 2 * kCols + j * kCols));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * N + col0 + j * kCols), (__m256i)h);
    }
}

// Rows m0 .. m0 + 31 (at most) of a 32-column strip into ctmp: B tiles rebuilt on the fly when
// the whole batch fits one pass (Mp <= 32), else read from the strip's prebuilt buffer.
AMX_TARGET inline void strip_pass(const at::BFloat16* x, int64_t Mp, int64_t m0, int64_t K, const uint8_t* w,
                                  const at::BFloat16* sz, int64_t N, int gs, int64_t blk0, int nb,
                                  const uint16_t* buf, float* ctmp) {
  const bool two = m0 + kTileRows < Mp;
  if (Mp <= 2 * kTileRows) {
    const uint8_t* src0 = w + blk0 * (K / 2) * kCols;
    FreshTiles tiles{dequant_consts(), src0, src0 + (K / 2) * kCols, sz, N, blk0 * kCols, gs, nb, {}};
    if (two && nb == 2) tile_products<2, 2>(x, K, tiles, ctmp);
    else if (two) tile_products<2, 1>(x, K, tiles, ctmp);
    else if (nb == 2) tile_products<1, 2>(x, K, tiles, ctmp);
    else tile_products<1, 1>(x, K, tiles, ctmp);
    return;
  }
  StripTiles tiles{buf, nb};
  const at::BFloat16* xr = x + m0 * K;
  if (two && nb == 2) tile_products<2, 2>(xr, K, tiles, ctmp);
  else if (two) tile_products<2, 1>(xr, K, tiles, ctmp);
  else if (nb == 2) tile_products<1, 2>(xr, K, tiles, ctmp);
  else tile_products<1, 1>(xr, K, tiles, ctmp);
}

// out = bf16(silu(g) * u) from the fp32 sums of a gate strip and the matching up strip
AMX_TARGET void glu_rows(const float* g, const float* u, int rows, int nb, at::BFloat16* out, int64_t ldo,
                         int64_t col0) {
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < nb; ++j) {
      const __m512 gv = _mm512_loadu_ps(g + i * 2 * kCols + j * kCols);
      const __m512 uv = _mm512_loadu_ps(u + i * 2 * kCols + j * kCols);
      const __m256bh h = _mm512_cvtneps_pbh(abtest_int4_simd::silu_mul_ps(gv, uv));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * ldo + col0 + j * kCols), (__m256i)h);
    }
}

// Strips [s0, s1) of the output. glu: the weight's first N/2 columns are a gate and the last N/2
// an up projection, and the output [M, N/2] is silu(gate) * up of the fp32 sums (strip s of the
// gate with strip s of the up half, one rounding to bf16).
AMX_TARGET void amx_columns(const at::BFloat16* x, int64_t Mp, int64_t M, int64_t K, const uint8_t* w,
                            const at::BFloat16* sz, int64_t N, int gs, int64_t s0, int64_t s1, bool glu,
                            at::BFloat16* out) {
  configure_tiles();
  const int64_t blocks = N / kCols;
  const bool prebuilt = Mp > 2 * kTileRows;
  const size_t strip_elems = static_cast<size_t>(K / kKStep) * 2 * kTileRows * 32;
  std::vector<uint16_t> mem(prebuilt ? (glu ? 2 : 1) * strip_elems + 32 : 32);
  uint16_t* buf = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(mem.data()) + 63) & ~uintptr_t(63));
  uint16_t* buf_up = buf + strip_elems;
  alignas(64) float ctmp[2 * kTileRows * 2 * kCols];
  alignas(64) float ctmp_up[2 * kTileRows * 2 * kCols];
  const int64_t up0 = blocks / 2;  // first column block of the up half
  const int64_t ldo = glu ? N / 2 : N;
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t blk0 = 2 * s;
    const int nb = static_cast<int>(std::min<int64_t>(2, (glu ? up0 : blocks) - blk0));
    if (prebuilt) {
      dequant_strip(w, sz, N, K, gs, blk0, nb, buf);
      if (glu) dequant_strip(w, sz, N, K, gs, up0 + blk0, nb, buf_up);
    }
    for (int64_t m0 = 0; m0 < Mp; m0 += 2 * kTileRows) {
      const int rows = static_cast<int>(std::min<int64_t>(2 * kTileRows, M - m0));
      strip_pass(x, Mp, m0, K, w, sz, N, gs, blk0, nb, buf, ctmp);
      if (glu) strip_pass(x, Mp, m0, K, w, sz, N, gs, up0 + blk0, nb, buf_up, ctmp_up);
      if (rows <= 0) continue;
      if (glu) glu_rows(ctmp, ctmp_up, rows, nb, out + m0 * ldo, ldo, blk0 * kCols);
      else store_rows(ctmp, rows, nb, out + m0 * ldo, ldo, blk0 * kCols);
    }
  }
  _tile_release();
}

at::Tensor amx_mm(const at::Tensor& x, const at::Tensor& w, int64_t group_size, const at::Tensor& sz, bool glu) {
  TORCH_CHECK(amx_ready(), "int4_mm_amx: this CPU or kernel does not allow AMX");
  TORCH_CHECK(w.dim() == 3 && w.scalar_type() == at::kByte && w.size(2) == kCols, "w must be uint8 [N/16, K/2, 16]");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16, "x must be 2-D bf16");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0) * kCols;
  TORCH_CHECK(w.size(1) * 2 == K, "w holds K = ", w.size(1) * 2, ", x has K = ", K);
  TORCH_CHECK(group_size > 0 && group_size % kKStep == 0 && K % group_size == 0, "int4_mm_amx needs a group size ",
              "that is a multiple of 32 and divides K; got ", group_size, " for K = ", K);
  TORCH_CHECK(sz.dim() == 3 && sz.scalar_type() == at::kBFloat16 && sz.size(0) == K / group_size && sz.size(1) == N &&
                  sz.size(2) == 2,
              "scales_and_zeros must be bf16 [K/g, N, 2]");
  TORCH_CHECK(!glu || (N / 2) % (2 * kCols) == 0, "int4_mm_amx_glu needs N/2 a multiple of 32, got N = ", N);
  at::Tensor out = at::empty({M, glu ? N / 2 : N}, x.options());
  if (M == 0) return out;
  // rows padded to whole 16-row tiles (zeros): every row goes through the same tile code
  const int64_t Mp = (M + kTileRows - 1) / kTileRows * kTileRows;
  at::Tensor xp = x.contiguous();
  if (Mp != M) {
    at::Tensor pad = at::zeros({Mp, K}, x.options());
    pad.narrow(0, 0, M).copy_(xp);
    xp = pad;
  }
  const at::BFloat16* xptr = xp.data_ptr<at::BFloat16>();
  at::Tensor wc = w.contiguous();
  const uint8_t* wp = wc.data_ptr<uint8_t>();
  at::Tensor szc = sz.contiguous();
  const at::BFloat16* szp = szc.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const int64_t strips = glu ? N / (4 * kCols) : (N / kCols + 1) / 2;
  at::parallel_for(0, strips, 1, [&](int64_t s0, int64_t s1) {
    amx_columns(xptr, Mp, M, K, wp, szp, N, static_cast<int>(group_size), s0, s1, glu, op);
  });
  return out;
}

at::Tensor int4_mm_amx(const at::Tensor& x, const at::Tensor& w, int64_t group_size, const at::Tensor& sz) {
  return amx_mm(x, w, group_size, sz, false);
}

// silu(x W_gate^T) * (x W_up^T) for a fused [gate; up] weight: [M, N/2]
at::Tensor int4_mm_amx_glu(const at::Tensor& x, const at::Tensor& w, int64_t group_size, const at::Tensor& sz) {
  return amx_mm(x, w, group_size, sz, true);
}

bool int4_amx_available() { return amx_ready(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(abtest_int4, m) {
  m.def("int4_mm_amx(Tensor x, Tensor w, int group_size, Tensor scales_and_zeros) -> Tensor");
  m.def("int4_mm_amx_glu(Tensor x, Tensor w, int group_size, Tensor scales_and_zeros) -> Tensor");
  m.def("int4_amx_available() -> bool", &int4_amx_available);
}

TORCH_LIBRARY_IMPL(abtest_int4, CPU, m) {
  m.impl("int4_mm_amx", &int4_mm_amx);
  m.impl("int4_mm_amx_glu", &int4_mm_amx_glu);
}
