// Generic multi-tensor launcher: many tensors, many chunks, one kernel launch.
//
// The host describes each tensor with a trivially copyable struct `Meta` (pointers, sizes, per-tensor
// scalars) and splits every tensor into chunks of `chunk` elements. Both tables travel to the device in
// one pinned host buffer copied asynchronously on the current stream (the caching host allocator keeps
// the buffer alive until the copy is done: no host synchronization). Block b of a launch processes
// chunk b: `chunks[b] = {tensor index, first element}` (linear chunks, or the caller's work items such as
// 2-d tiles). Offsets are 64-bit.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace mulo {
namespace mt {

struct Chunk {
  int64_t start;  // first element of the chunk in its tensor
  int32_t tensor;
  int32_t pad;
};

// Device copies of the per-tensor table and the chunk table (views into one device buffer).
template <class Meta>
struct Tables {
  at::Tensor storage;  // keeps the device buffer alive
  const Meta* metas = nullptr;
  const Chunk* chunks = nullptr;
  int64_t num_chunks = 0;
};

inline int64_t align_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// Uploads the per-tensor table and the work items of a launch (block b processes chunks[b]).
template <class Meta>
Tables<Meta> upload(const std::vector<Meta>& metas, const std::vector<Chunk>& chunks, const at::Device& device) {
  const int64_t meta_bytes = align_up(static_cast<int64_t>(metas.size() * sizeof(Meta)), 64);
  const int64_t chunk_bytes = static_cast<int64_t>(chunks.size() * sizeof(Chunk));
  const int64_t total = meta_bytes + chunk_bytes;
  at::Tensor host = at::empty({total > 0 ? total : 1}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* h = host.data_ptr<uint8_t>();
  if (!metas.empty()) std::memcpy(h, metas.data(), metas.size() * sizeof(Meta));
  if (!chunks.empty()) std::memcpy(h + meta_bytes, chunks.data(), chunks.size() * sizeof(Chunk));
  Tables<Meta> t;
  t.storage = host.to(device, /*non_blocking=*/true);
  auto* d = t.storage.template data_ptr<uint8_t>();
  t.metas = reinterpret_cast<const Meta*>(d);
  t.chunks = reinterpret_cast<const Chunk*>(d + meta_bytes);
  t.num_chunks = static_cast<int64_t>(chunks.size());
  return t;
}

// Linear work items: every tensor split into chunks of `chunk` elements.
template <class Meta>
Tables<Meta> upload(const std::vector<Meta>& metas, const std::vector<int64_t>& numels, int64_t chunk,
                    const at::Device& device) {
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < numels.size(); ++i)
    for (int64_t s = 0; s < numels[i]; s += chunk) chunks.push_back({s, static_cast<int32_t>(i), 0});
  return upload(metas, chunks, device);
}

// Launches `kernel<<<num_chunks, threads, smem, current stream>>>(args...)` and checks the launch.
template <class Kernel, class... Args>
void launch(Kernel kernel, int64_t blocks, int threads, size_t smem, Args... args) {
  if (blocks <= 0) return;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "mulo: too many chunks for one launch (", blocks, ")");
  kernel<<<static_cast<unsigned>(blocks), threads, smem, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mt
}  // namespace mulo
