// A CPU emulation of the CUDA execution model, for testing the CUDA kernels
// (kernels/cuda/*.cuh) on machines without a GPU (kernels/cuda/compat.h says what kernels
// may use). A launch runs its blocks one after another on the calling thread; the threads
// of a block are fibers (ucontext) that run until they reach __syncthreads or a warp
// shuffle, so barriers and shuffles behave as on the device, and a barrier some threads
// never reach is reported as a deadlock (abort) instead of hanging. Device memory is host
// memory; streams run their work at once (kernels/cuda/emu_runtime.h).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

// The emulated stream: work runs when it is enqueued.
struct SpanServeEmuStream;
using cudaStream_t = SpanServeEmuStream*;

constexpr int warpSize = 32;

namespace spanserve::kernels::cuda::emu {

// The running fiber's coordinates (set by the scheduler at every switch). Functions rather
// than thread_local objects named in every kernel: GCC's UBSan mis-checks such accesses
// from a fiber's stack.
const dim3& ThreadIdx();
const dim3& BlockIdx();
const dim3& BlockDim();
const dim3& GridDim();

// Barriers of the running block (the fiber yields until every live thread arrives).
void SyncThreads();
void SyncWarp();
// The running thread's shuffle slot, and the slot of `lane` in its warp.
uint64_t* ShuffleSlot();
uint64_t* WarpLaneSlot(int lane);
int LaneId();
// The running launch's dynamic shared memory.
void* DynamicShared();
// Runs body once per thread of every block of the grid.
void RunGrid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);

template <class T>
T Shuffle(T v, int src_lane) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  *ShuffleSlot() = bits;
  SyncWarp();
  T r = v;
  if (src_lane >= 0 && src_lane < warpSize) std::memcpy(&r, WarpLaneSlot(src_lane), sizeof(T));
  SyncWarp();
  return r;
}

template <class... P, class... A>
void Launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t,
            A&&... args) {
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  RunGrid(grid, block, shared_bytes, [&] { std::apply(kernel, params); });
}

}  // namespace spanserve::kernels::cuda::emu

#define threadIdx (::spanserve::kernels::cuda::emu::ThreadIdx())
#define blockIdx (::spanserve::kernels::cuda::emu::BlockIdx())
#define blockDim (::spanserve::kernels::cuda::emu::BlockDim())
#define gridDim (::spanserve::kernels::cuda::emu::GridDim())

inline void __syncthreads() { ::spanserve::kernels::cuda::emu::SyncThreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::spanserve::kernels::cuda::emu::SyncWarp(); }

template <class T>
T __shfl_sync(unsigned, T v, int src_lane, int width = warpSize) {
  const int lane = ::spanserve::kernels::cuda::emu::LaneId();
  return ::spanserve::kernels::cuda::emu::Shuffle(v, (lane & ~(width - 1)) + (src_lane % width));
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = warpSize) {
  const int lane = ::spanserve::kernels::cuda::emu::LaneId();
  const int src = lane ^ lane_mask;
  return ::spanserve::kernels::cuda::emu::Shuffle(
      v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = warpSize) {
  const int lane = ::spanserve::kernels::cuda::emu::LaneId();
  const int src = lane + static_cast<int>(delta);
  return ::spanserve::kernels::cuda::emu::Shuffle(
      v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}

using std::memcpy;
