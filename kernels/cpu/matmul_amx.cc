// The AMX path of the bf16 dot-product MatMul (matmul_bf16dot.h). Compiled with AMX-TILE and
// AMX-BF16 and entered only where the CPU has them and the kernel lets this process use the
// tile registers.
//
// Tiles (every one 16 rows × 64 bytes): C0..C3 f32 accumulators, A0 / A1 sixteen weight rows
// each (32 bf16 of k, read in place from the weight matrix with its row stride), B0 / B1 the
// matching 32 bf16 of sixteen x rows in VNNI pairs (row p: element pair (2p, 2p + 1) of each
// x row; x is repacked so once per call). C[r][j] = Σ over k tiles, in order, of TDPBF16PS's
// pair products of weight row r and x row j: the same operations whatever m, the other rows,
// the threads or which tiles sit side by side, so results do not depend on the batch.
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/cpu/amx.h"
#include "kernels/cpu/matmul_bf16dot.h"

// GCC 12 reports its own _mm512_undefined_epi32 (the unpack intrinsics' pass-through operand,
// never read with an all-ones mask) as maybe uninitialized once Transpose16 is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace spanserve::kernels::cpu::internal {
namespace {

constexpr int64_t kPanel = 32;   // weight rows per step (A0, A1)
constexpr int64_t kXBlock = 16;  // x rows per B tile

void ConfigureTiles() {
  alignas(64) TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  LoadTileConfig(config);
}

// The 16 × 16 dwords r[i][c] → r[c][i].
[[gnu::always_inline]] inline void Transpose16(__m512i (&r)[16]) {
  __m512i t[16], u[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + q], 128-bit lane L: column 4L + q of rows 4i .. 4i + 3.
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const __m512i a0 = _mm512_shuffle_i32x4(u[q], u[4 + q], 0x44);
    const __m512i a1 = _mm512_shuffle_i32x4(u[q], u[4 + q], 0xee);
    const __m512i b0 = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0x44);
    const __m512i b1 = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0xee);
    r[q] = _mm512_shuffle_i32x4(a0, b0, 0x88);
    r[4 + q] = _mm512_shuffle_i32x4(a0, b0, 0xdd);
    r[8 + q] = _mm512_shuffle_i32x4(a1, b1, 0x88);
    r[12 + q] = _mm512_shuffle_i32x4(a1, b1, 0xdd);
  }
}

// A buffer that grows to the largest call, then is reused (a plain array: a std::vector
// instantiated here would carry AMX-file code out of line).
struct Buffer {
  std::unique_ptr<uint32_t[]> data;
  int64_t size = 0;
  uint32_t* Reserve(int64_t dwords) {
    if (size < dwords) {
      data.reset(new uint32_t[dwords]);
      size = dwords;
    }
    return data.get();
  }
};

// An accumulator tile, stored as c (weight rows r0 .. r0 + 15, x rows i0 .. i0 + 15) into y: rows
// below n and m only, plus the bias.
[[gnu::always_inline]] inline void StoreC(const float (&c)[16][16], int64_t r0, int64_t i0,
                                          int64_t m, int64_t n, const float* bias_panel, float* y) {
  if (r0 >= n || i0 >= m) return;
  __m512i rows[16];
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r) rows[r] = _mm512_load_si512(c[r]);
  Transpose16(rows);
  const __mmask16 lanes =
      n - r0 >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (n - r0)) - 1);
  const __m512 b = bias_panel != nullptr ? _mm512_maskz_loadu_ps(lanes, bias_panel) : __m512{};
  const int64_t js = std::min<int64_t>(16, m - i0);
  for (int64_t j = 0; j < js; ++j) {
    __m512 v = _mm512_castsi512_ps(rows[j]);
    if (bias_panel != nullptr) v = _mm512_add_ps(v, b);
    _mm512_mask_storeu_ps(y + (i0 + j) * n + r0, lanes, v);
  }
}

}  // namespace

bool CpuGrantsAmxTiles(int bit) {
  if (const char* cap = std::getenv("SPANSERVE_MAX_ISA"); cap != nullptr && *cap != '\0') {
    return false;  // avx2 or avx512: no tiles
  }
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (((edx >> 24) & 1) == 0 || ((edx >> bit) & 1) == 0) return false;
  // The OS must enable the tile state (XCR0 bits 17, 18) and grant it to this process.
  if ((_xgetbv(0) & (3u << 17)) != (3u << 17)) return false;
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool granted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return granted;
}

bool CpuHasAmxBf16() {
  static const bool usable = CpuHasAvx512Bf16() && CpuGrantsAmxTiles(22);
  return usable;
}

void MatMulBf16Amx(const uint16_t* xb, int64_t kp, int64_t m, const WeightMatrix& w,
                   const WeightVector* bias, float* y) {
  SPANSERVE_CHECK(w.dtype == DType::kBF16 && w.quant == QuantType::kNone);
  const int64_t n = w.rows;
  const int64_t k = w.cols;
  SPANSERVE_CHECK(k > 0 && k % 32 == 0);
  if (m <= 0 || n <= 0) return;
  const int64_t kt_count = k / 32;
  const int64_t blocks = (m + kXBlock - 1) / kXBlock;
  const auto* wd = static_cast<const uint16_t*>(w.data);
  // x in B-tile order: [block][k tile][pair p][x row j] dwords, zero past m. The pointer, not
  // the thread_local, goes into the jobs.
  thread_local Buffer x_buffer;
  uint32_t* xv = x_buffer.Reserve(blocks * kt_count * 256);
  ParallelFor(blocks, 2, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t rows = std::min<int64_t>(kXBlock, m - blk * kXBlock);
      for (int64_t kt = 0; kt < kt_count; ++kt) {
        __m512i r[16];
        for (int j = 0; j < 16; ++j) r[j] = _mm512_setzero_si512();
        for (int64_t j = 0; j < rows; ++j) {
          r[j] = _mm512_loadu_si512(xb + (blk * kXBlock + j) * kp + kt * 32);
        }
        Transpose16(r);
        uint32_t* out = xv + (blk * kt_count + kt) * 256;
#pragma GCC unroll 16
        for (int p = 0; p < 16; ++p) _mm512_storeu_si512(out + 16 * p, r[p]);
      }
    }
  });
  const int64_t panels = (n + kPanel - 1) / kPanel;
  const int64_t stride = k * 2;
  Parallel([&](int64_t t, int64_t threads) {
    const int64_t p0 = panels * t / threads, p1 = panels * (t + 1) / threads;
    if (p0 >= p1) return;
    ConfigureTiles();
    thread_local std::unique_ptr<uint16_t[]> tail;
    thread_local int64_t tail_size = 0;
    float bias_panel[kPanel];
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r0 = p * kPanel;
      const int64_t rows = std::min(kPanel, n - r0);
      const uint16_t* a = wd + r0 * k;
      if (rows < kPanel) {
        // The last panel's rows, zero-padded: A tiles never read past the matrix.
        if (tail_size < kPanel * k) {
          tail.reset(new uint16_t[kPanel * k]);
          tail_size = kPanel * k;
        }
        std::memset(tail.get(), 0, kPanel * k * 2);
        std::memcpy(tail.get(), a, rows * k * 2);
        a = tail.get();
      }
      const float* b = nullptr;
      if (bias != nullptr) {
        for (int64_t r = 0; r < rows; ++r) {
          bias_panel[r] = WeightAt(bias->data, bias->dtype, r0 + r);
        }
        b = bias_panel;
      }
      for (int64_t blk = 0; blk < blocks; blk += 2) {
        const bool two = blk + 1 < blocks;
        const uint32_t* x0 = xv + blk * kt_count * 256;
        const uint32_t* x1 = x0 + kt_count * 256;
        _tile_zero(0);
        _tile_zero(1);
        if (two) {
          _tile_zero(2);
          _tile_zero(3);
        }
        for (int64_t kt = 0; kt < kt_count; ++kt) {
          _tile_loadd(4, a + kt * 32, stride);
          _tile_loadd(5, a + 16 * k + kt * 32, stride);
          _tile_loadd(6, x0 + kt * 256, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 5, 6);
          if (two) {
            _tile_loadd(7, x1 + kt * 256, 64);
            _tile_dpbf16ps(2, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
          }
        }
        const int64_t i0 = blk * kXBlock;
        // The tile store takes its register as an immediate.
        alignas(64) float c[16][16];
        const float* b16 = b != nullptr ? b + 16 : nullptr;
        _tile_stored(0, c, 64);
        StoreC(c, r0, i0, m, n, b, y);
        _tile_stored(1, c, 64);
        StoreC(c, r0 + 16, i0, m, n, b16, y);
        if (two) {
          _tile_stored(2, c, 64);
          StoreC(c, r0, i0 + kXBlock, m, n, b, y);
          _tile_stored(3, c, 64);
          StoreC(c, r0 + 16, i0 + kXBlock, m, n, b16, y);
        }
      }
    }
    _tile_release();
  });
}

}  // namespace spanserve::kernels::cpu::internal
