// What the AMX kernels (matmul_amx.cc, matmul_amx_int8.cc) share: the tile configuration and
// whether this process may use the tile registers.
#pragma once

#include <cstdint>
#include <cstring>

namespace spanserve::kernels::cpu::internal {

// LDTILECFG's 64-byte operand (palette 1).
struct TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// LDTILECFG with the whole 64-byte configuration as its operand. (GCC's _tile_loadconfig tells
// the compiler it reads only a pointer's worth of the struct, which lets it drop the stores
// that fill in the rest: tiles left unconfigured, and the first tile instruction faults.)
[[gnu::always_inline]] inline void LoadTileConfig(const TileConfig& config) {
  asm volatile("ldtilecfg %0" : : "m"(config));
}

// Whether the CPU has AMX-TILE and the AMX extension whose CPUID.(7, 0):EDX bit is `bit`
// (22 BF16, 25 INT8), the OS enables the tile state and grants it to this process (asked
// once), and SPANSERVE_MAX_ISA caps nothing (any cap turns the tiles off).
bool CpuGrantsAmxTiles(int bit);

}  // namespace spanserve::kernels::cpu::internal
