// A hook the engine's own kernels call on each block of output they have just
// written, while it is still in cache: a fused activation, applied without a
// second pass over the whole tensor.
#ifndef FLEETTUNE_ENGINE_KERNELS_EPILOGUE_H_
#define FLEETTUNE_ENGINE_KERNELS_EPILOGUE_H_

#include <cstdint>

namespace fleettune::engine::kernels {

// fn(ctx, block, n) on n contiguous output floats; fn == nullptr: none.
struct PlaneEpilogue {
  void (*fn)(const void* ctx, float* plane, int64_t n) = nullptr;
  const void* ctx = nullptr;
};

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_EPILOGUE_H_
