// The AMX path of the integer dot products on packed Q8_0 / Q4_0 / Q4_1 weights
// (matmul_int8dot.h, "Packed weights"). Compiled with AMX-TILE and AMX-INT8 and entered only
// where the CPU has them and the kernel lets this process use the tile registers.
//
// A packed record's quants are laid out as an AMX B tile: 8 rows (element quads of the block)
// of 16 weight rows × 4 bytes. Each call copies a group's records into such tiles as the true
// values (Q8_0 q, Q4_0 nibble − 8 signed; Q4_1 nibbles unsigned). With A sixteen quantized x
// rows × the block's 32 bytes, one TDPBSSD (Q4_1: TDPBSUD) gives the 16 × 16 exact integer
// dots D of a block, the integers the VNNI kernel gets from VPDPBUSD and its offset. The f32
// chains over the blocks are then the VNNI kernel's, operation for operation, so both paths
// give the same bits for every row and which one a call takes (by m alone) changes nothing.
//
// Per block and 16 × 16 outputs a tile product, a tile store and 16 vector rows of scaling:
// faster than VPDPBUSD from about 32 rows on (SmolLM2's shapes, docs/KERNELS.md), so smaller
// calls stay on the VNNI kernel.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/cpu/amx.h"
#include "kernels/cpu/matmul_int8dot.h"

// GCC 12 reports the pass-through operand of its own _mm512_cvtph_ps (never read with an
// all-ones mask) as maybe uninitialized once inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace spanserve::kernels::cpu::internal {
namespace {

// Tiles: C0 / C1 the int32 dots of two consecutive blocks (16 x rows × 16 weight rows), A0 /
// A1 sixteen x rows × those blocks' 32 bytes, B0 / B1 the matching quants of sixteen weight
// rows (8 element quads × 16 rows × 4 bytes).
void ConfigureTiles() {
  alignas(64) TileConfig config;
  for (int t = 0; t < 2; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  for (int t = 4; t < 6; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 32;
  }
  for (int t = 6; t < 8; ++t) {
    config.rows[t] = 8;
    config.colsb[t] = 64;
  }
  LoadTileConfig(config);
}

// x as the tiles take it, per 16 rows (zero past m): per block the rows' 32 quantized bytes
// side by side (an A tile), and per block the rows' d_x and d_x·Σq, 16 floats each.
struct XTiles {
  const int8_t* q;
  const float* d;
  const float* sd;
  int64_t count, blocks, m;
};

// The weights' B tiles for one group of 16 rows, per block: the packed quants as signed bytes
// for Q8_0 (q) and Q4_0 (nibble − 8), unsigned nibbles for Q4_1, so that TDPBSSD / TDPBSUD
// give the exact dot D = Σ q_x·q_w with no offset to take back.
template <QuantType kQ>
void UnpackGroup(const uint8_t* records, int64_t blocks, uint8_t* out) {
  constexpr int64_t kRecord = Int8PackedRecordBytes(kQ);
  constexpr int64_t kQuants = Int8PackedQuantsAt(kQ);
  const __m512i low = _mm512_set1_epi8(0x0f);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* q = records + b * kRecord + kQuants;
    uint8_t* o = out + b * 512;
    if constexpr (kQ == QuantType::kQ8_0) {
      const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
      for (int j = 0; j < 8; ++j) {
        _mm512_storeu_si512(o + 64 * j, _mm512_xor_si512(_mm512_loadu_si512(q + 64 * j), bias));
      }
    } else {
      const __m512i eight = _mm512_set1_epi8(kQ == QuantType::kQ4_0 ? 8 : 0);
      for (int j = 0; j < 4; ++j) {
        const __m512i v = _mm512_loadu_si512(q + 64 * j);
        _mm512_storeu_si512(o + 64 * j, _mm512_sub_epi8(_mm512_and_si512(v, low), eight));
        _mm512_storeu_si512(o + 256 + 64 * j,
                            _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), low), eight));
      }
    }
  }
}

// One block's dots (c) into the 16 rows' chains: acc[i] = fma(d_w · d_x[i], f32(D), acc[i]).
[[gnu::always_inline]] inline void Accumulate(const int32_t (&c)[16][16], const float* d, __m512 dw,
                                              __m512 (&acc)[16]) {
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) {
    acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(d[i])),
                             _mm512_cvtepi32_ps(_mm512_load_si512(c[i])), acc[i]);
  }
}

// C_c = A_c · B_c (c = 0: tiles 0, 4, 6; c = 1: tiles 1, 5, 7). The tile instructions take
// their registers as immediates.
template <QuantType kQ, int kC>
[[gnu::always_inline]] inline void Dot() {
  if constexpr (kQ == QuantType::kQ4_1 && kC == 0) {
    _tile_dpbsud(0, 4, 6);
  } else if constexpr (kQ == QuantType::kQ4_1) {
    _tile_dpbsud(1, 5, 7);
  } else if constexpr (kC == 0) {
    _tile_dpbssd(0, 4, 6);
  } else {
    _tile_dpbssd(1, 5, 7);
  }
}

// Groups g0 .. g1 - 1 (16 weight rows each) against every x tile.
template <QuantType kQ>
void Groups(const WeightMatrix& w, const XTiles& x, const WeightVector* bias, float* y, int64_t g0,
            int64_t g1) {
  const int64_t n = w.rows, blocks = x.blocks;
  constexpr int64_t kRecord = Int8PackedRecordBytes(kQ);
  const auto* packed = static_cast<const uint8_t*>(w.packed);
  // The group's B tiles. A plain array: a std::vector instantiated here would carry AMX-file
  // code out of line.
  thread_local std::unique_ptr<uint8_t[]> unpacked;
  thread_local int64_t unpacked_size = 0;
  if (unpacked_size < blocks * 512) {
    unpacked.reset(new uint8_t[blocks * 512]);
    unpacked_size = blocks * 512;
  }
  uint8_t* bt = unpacked.get();
  alignas(64) int32_t c[2][16][16];
  alignas(64) float out[16][16];
  ConfigureTiles();
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* records = packed + g * blocks * kRecord;
    UnpackGroup<kQ>(records, blocks, bt);
    const int64_t r0 = 16 * g;
    const int64_t rows = std::min<int64_t>(16, n - r0);
    const __mmask16 lanes = static_cast<__mmask16>((1u << rows) - 1);
    alignas(64) float bias_panel[16] = {};
    if (bias != nullptr) {
      for (int64_t r = 0; r < rows; ++r) bias_panel[r] = WeightAt(bias->data, bias->dtype, r0 + r);
    }
    const __m512 bv = _mm512_load_ps(bias_panel);
    for (int64_t t = 0; t < x.count; ++t) {
      const int8_t* a = x.q + t * blocks * 512;
      const float* d = x.d + t * blocks * 16;
      __m512 acc[16];
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
      // Three blocks in flight: block b's product on the tiles while block b − 1's tile is
      // stored and block b − 2's dots (stored an iteration earlier) are scaled.
      const auto step = [&](auto parity, int64_t b) {
        constexpr int kP = decltype(parity)::value;
        // (The tile instructions take their registers as literals.)
        if (b < blocks) {
          if constexpr (kP == 0) {
            _tile_loadd(4, a + b * 512, 32);
            _tile_loadd(6, bt + b * 512, 64);
            _tile_zero(0);
          } else {
            _tile_loadd(5, a + b * 512, 32);
            _tile_loadd(7, bt + b * 512, 64);
            _tile_zero(1);
          }
          Dot<kQ, kP>();
        }
        if (b >= 1 && b - 1 < blocks) {
          if constexpr (kP == 0) {
            _tile_stored(1, c[1], 64);
          } else {
            _tile_stored(0, c[0], 64);
          }
        }
        if (b >= 2 && b - 2 < blocks) {
          const auto* dw = reinterpret_cast<const __m256i*>(records + (b - 2) * kRecord);
          Accumulate(c[kP], d + (b - 2) * 16, _mm512_cvtph_ps(_mm256_loadu_si256(dw)), acc);
        }
      };
      for (int64_t b = 0; b < blocks + 2; b += 2) {
        step(std::integral_constant<int, 0>(), b);
        step(std::integral_constant<int, 1>(), b + 1);
      }
      for (int i = 0; i < 16; ++i) _mm512_store_ps(out[i], acc[i]);
      if constexpr (kQ == QuantType::kQ4_1) {
        // The mins' chains: M[i] = fma(m_w, d_x·Σq[i], M[i]) over the blocks.
        const float* sd = x.sd + t * blocks * 16;
        __m512 mins[16];
        for (int i = 0; i < 16; ++i) mins[i] = _mm512_setzero_ps();
        for (int64_t b = 0; b < blocks; ++b) {
          const __m512 mw = _mm512_cvtph_ps(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(records + b * kRecord + 32)));
#pragma GCC unroll 16
          for (int i = 0; i < 16; ++i) {
            mins[i] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sd[b * 16 + i]), mins[i]);
          }
        }
        for (int i = 0; i < 16; ++i) {
          _mm512_store_ps(out[i], _mm512_add_ps(_mm512_load_ps(out[i]), mins[i]));
        }
      }
      const int64_t xrows = std::min<int64_t>(16, x.m - 16 * t);
      for (int64_t i = 0; i < xrows; ++i) {
        __m512 v = _mm512_load_ps(out[i]);
        if (bias != nullptr) v = _mm512_add_ps(v, bv);
        _mm512_mask_storeu_ps(y + (16 * t + i) * n + r0, lanes, v);
      }
    }
  }
  _tile_release();
}

// A buffer that grows to the largest call, then is reused.
template <typename T>
T* Reserve(std::unique_ptr<T[]>& buffer, int64_t& size, int64_t count) {
  if (size < count) {
    buffer.reset(new T[count]);
    size = count;
  }
  return buffer.get();
}

}  // namespace

bool CpuHasAmxInt8() {
  static const bool usable = CpuHasAvx512Vnni() && CpuGrantsAmxTiles(25);
  return usable;
}

void MatMulInt8PackedAmx(const float* x_rows, int64_t m, const WeightMatrix& w,
                         const WeightVector* bias, float* y) {
  SPANSERVE_CHECK(w.packed != nullptr && Int8PackedAmxSupports(w.quant) && CpuHasAmxInt8());
  const int64_t n = w.rows, k = w.cols, blocks = k / 32;
  if (m <= 0 || n <= 0) return;
  // x quantized once, 16 rows at a time, into tile order (the pointers, not the
  // thread_locals, go into the jobs).
  const int64_t count = (m + 15) / 16;
  thread_local std::unique_ptr<int8_t[]> q_buffer;
  thread_local std::unique_ptr<float[]> f_buffer;
  thread_local int64_t q_size = 0, f_size = 0;
  int8_t* q = Reserve(q_buffer, q_size, count * 16 * k);
  float* d = Reserve(f_buffer, f_size, 2 * count * 16 * blocks);
  float* sd = d + count * 16 * blocks;
  ParallelFor(count, 1, [&](int64_t t0, int64_t t1) {
    // The tile's rows as QuantizeRowsPlain writes them, then scattered.
    thread_local std::unique_ptr<int8_t[]> rq_buffer;
    thread_local std::unique_ptr<float[]> rd_buffer;
    thread_local std::unique_ptr<int32_t[]> rs_buffer;
    thread_local int64_t rq_size = 0, rd_size = 0, rs_size = 0;
    int8_t* rq = Reserve(rq_buffer, rq_size, 16 * k);
    float* rd = Reserve(rd_buffer, rd_size, 16 * blocks);
    int32_t* rs = Reserve(rs_buffer, rs_size, 16 * blocks);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t rows = std::min<int64_t>(16, m - 16 * t);
      QuantizeRowsPlain(x_rows + 16 * t * k, rows, k, rq, rd, rs);
      for (int64_t b = 0; b < blocks; ++b) {
        int8_t* tile = q + (t * blocks + b) * 512;
        float* td = d + (t * blocks + b) * 16;
        float* tsd = sd + (t * blocks + b) * 16;
        for (int64_t r = 0; r < 16; ++r) {
          if (r < rows) {
            std::memcpy(tile + 32 * r, rq + r * k + 32 * b, 32);
            const int64_t at = r * blocks + b;
            td[r] = rd[at];
            tsd[r] = rd[at] * static_cast<float>(rs[at]);
          } else {
            std::memset(tile + 32 * r, 0, 32);
            td[r] = 0.0f;
            tsd[r] = 0.0f;
          }
        }
      }
    }
  });
  const XTiles x{q, d, sd, count, blocks, m};
  const int64_t groups = (n + 15) / 16;
  Parallel([&](int64_t t, int64_t threads) {
    const int64_t g0 = groups * t / threads, g1 = groups * (t + 1) / threads;
    if (g0 >= g1) return;
    switch (w.quant) {
      case QuantType::kQ8_0:
        return Groups<QuantType::kQ8_0>(w, x, bias, y, g0, g1);
      case QuantType::kQ4_0:
        return Groups<QuantType::kQ4_0>(w, x, bias, y, g0, g1);
      default:
        return Groups<QuantType::kQ4_1>(w, x, bias, y, g0, g1);
    }
  });
}

}  // namespace spanserve::kernels::cpu::internal
