#include "kernels/cuda/emu.h"

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

// The fibers' context switch (x86-64 System V): saves the callee-saved registers, the SSE
// control word and the x87 control word on the current stack, stores its stack pointer in
// *from, and resumes the context whose stack pointer is `to`. glibc's swapcontext would do
// the same plus two system calls (the signal mask) per switch, which the emulation pays
// millions of times.
extern "C" void spanserve_emu_switch(void** from, void* to);
asm(R"(
  .text
  .globl spanserve_emu_switch
  .type spanserve_emu_switch, @function
spanserve_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size spanserve_emu_switch, .-spanserve_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace spanserve::kernels::cuda::emu {
namespace {

thread_local dim3 thread_idx;
thread_local dim3 block_idx;
thread_local dim3 block_dim;
thread_local dim3 grid_dim;

constexpr size_t kStackBytes = 256 * 1024;
constexpr int kMaxThreads = 1024;

enum class State : uint8_t { kRunnable, kWaitBlock, kWaitWarp, kDone };

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  State state = State::kRunnable;
  uint64_t wait_generation = 0;
  dim3 index;
};

struct Warp {
  uint64_t generation = 0;
  int arrived = 0;
  int live = 0;
  int size = 0;  // its threads, live or not
};

// One block in flight on this thread.
struct Block {
  void* scheduler = nullptr;  // the scheduler's saved stack pointer
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<uint64_t> slots;
  uint64_t generation = 0;
  int arrived = 0;
  int live = 0;
  int current = 0;
  const std::function<void()>* body = nullptr;
};

struct ThreadState {
  uint64_t launches = 0;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<unsigned char> shared;
  Block* block = nullptr;
};

ThreadState& State_() {
  thread_local ThreadState state;
  return state;
}

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "CUDA emulation: %s (block %u,%u,%u)\n", what, block_idx.x, block_idx.y,
               block_idx.z);
  std::abort();
}

Block& Current() {
  Block* b = State_().block;
  if (b == nullptr) Fail("a device function ran outside a kernel launch");
  return *b;
}

void Yield(Block& b) {
  Fiber& f = b.fibers[b.current];
  spanserve_emu_switch(&f.sp, b.scheduler);
}

// Releases a barrier whose live threads have all arrived (also after a thread exits).
void MaybeRelease(Block& b, int warp) {
  if (b.arrived > 0 && b.arrived >= b.live) {
    b.arrived = 0;
    ++b.generation;
  }
  Warp& w = b.warps[warp];
  if (w.arrived > 0 && w.arrived >= w.live) {
    w.arrived = 0;
    ++w.generation;
  }
}

// A fiber's first frame: runs the kernel body, then switches back to the scheduler for good.
[[noreturn]] void FiberMain() {
  Block& b = Current();
  (*b.body)();
  Fiber& f = b.fibers[b.current];
  f.state = State::kDone;
  --b.live;
  const int warp = b.current / warpSize;
  --b.warps[warp].live;
  MaybeRelease(b, warp);
  spanserve_emu_switch(&f.sp, b.scheduler);
  std::abort();  // a finished fiber is never resumed
}

// A new fiber's stack, laid out as spanserve_emu_switch leaves a switched-out one: control
// words, six callee-saved registers, then FiberMain as the return address (entered with the
// stack aligned as after a call).
void* NewFiberStack(char* stack, size_t bytes) {
  auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t{15};
  auto* slot = reinterpret_cast<uint64_t*>(top);
  *--slot = 0;                                       // FiberMain's return address
  *--slot = reinterpret_cast<uint64_t>(&FiberMain);  // spanserve_emu_switch's ret
  for (int i = 0; i < 6; ++i) *--slot = 0;           // rbp rbx r12 r13 r14 r15
  *--slot = 0x1F80u | (uint64_t{0x037Fu} << 32);     // MXCSR, x87 control word
  return slot;
}

}  // namespace

const dim3& ThreadIdx() { return thread_idx; }
const dim3& BlockIdx() { return block_idx; }
const dim3& BlockDim() { return block_dim; }
const dim3& GridDim() { return grid_dim; }

void SyncThreads() {
  Block& b = Current();
  Fiber& f = b.fibers[b.current];
  if (b.warps[b.current / warpSize].arrived != 0) Fail("__syncthreads inside a warp shuffle");
  const uint64_t generation = b.generation;
  ++b.arrived;
  MaybeRelease(b, b.current / warpSize);
  if (b.generation != generation) return;  // the last to arrive
  f.state = State::kWaitBlock;
  f.wait_generation = generation;
  Yield(b);
}

void SyncWarp() {
  Block& b = Current();
  Fiber& f = b.fibers[b.current];
  Warp& w = b.warps[b.current / warpSize];
  // Every shuffle names the full mask: on the device, lanes that have returned never arrive
  // and the warp hangs or reads garbage.
  if (w.live != w.size) Fail("a full-mask warp shuffle after some lanes of the warp returned");
  const uint64_t generation = w.generation;
  ++w.arrived;
  MaybeRelease(b, b.current / warpSize);
  if (w.generation != generation) return;
  f.state = State::kWaitWarp;
  f.wait_generation = generation;
  Yield(b);
}

uint64_t* ShuffleSlot() {
  Block& b = Current();
  return &b.slots[b.current];
}

uint64_t* WarpLaneSlot(int lane) {
  Block& b = Current();
  const size_t i = static_cast<size_t>(b.current / warpSize * warpSize + lane);
  if (i >= b.fibers.size()) Fail("a shuffle read a lane past the block's last thread");
  return &b.slots[i];
}

int LaneId() { return Current().current % warpSize; }

void* DynamicShared() { return State_().shared.data(); }

void RunGrid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  ThreadState& ts = State_();
  if (ts.block != nullptr) Fail("a kernel launched another kernel");
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads <= 0 || threads > kMaxThreads) Fail("a block of more than 1024 threads");
  if (shared_bytes > 228 * 1024) Fail("more than 228 KiB of dynamic shared memory");
  while (static_cast<int>(ts.stacks.size()) < threads) {
    ts.stacks.push_back(
        std::unique_ptr<char[]>(new char[kStackBytes]));  // untouched pages stay free
  }
  // Dynamic shared memory starts as garbage on the device; poison it so kernels that read
  // it before writing show up.
  ts.shared.assign(shared_bytes + 16, 0xA5);
  grid_dim = grid;
  block_dim = block;
  // Every other launch runs a block's threads from the last to the first, so that a read of
  // shared memory some other thread writes without a barrier between shows up as a wrong
  // result in one of the two orders.
  const bool reverse = (ts.launches++ & 1) != 0;
  Block b;
  b.body = &body;
  b.fibers.resize(threads);
  b.slots.assign(threads, 0);
  b.warps.resize((threads + warpSize - 1) / warpSize);
  ts.block = &b;
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        block_idx = dim3(bx, by, bz);
        b.generation = 0;
        b.arrived = 0;
        b.live = threads;
        for (int w = 0; w < static_cast<int>(b.warps.size()); ++w) {
          b.warps[w] = Warp{};
          b.warps[w].live = std::min(warpSize, threads - w * warpSize);
          b.warps[w].size = b.warps[w].live;
        }
        for (int t = 0; t < threads; ++t) {
          Fiber& f = b.fibers[t];
          f.state = State::kRunnable;
          f.index = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
          f.sp = NewFiberStack(ts.stacks[t].get(), kStackBytes);
        }
        int done = 0;
        while (done < threads) {
          bool progress = false;
          done = 0;
          for (int i = 0; i < threads; ++i) {
            const int t = reverse ? threads - 1 - i : i;
            Fiber& f = b.fibers[t];
            if (f.state == State::kDone) {
              ++done;
              continue;
            }
            if (f.state == State::kWaitBlock && b.generation == f.wait_generation) continue;
            if (f.state == State::kWaitWarp &&
                b.warps[t / warpSize].generation == f.wait_generation) {
              continue;
            }
            f.state = State::kRunnable;
            b.current = t;
            thread_idx = f.index;
            spanserve_emu_switch(&b.scheduler, f.sp);
            progress = true;
            if (f.state == State::kDone) ++done;
          }
          if (!progress && done < threads) {
            ts.block = nullptr;
            Fail("deadlock: threads wait at barriers the others never reach");
          }
        }
      }
    }
  }
  ts.block = nullptr;
}

}  // namespace spanserve::kernels::cuda::emu
