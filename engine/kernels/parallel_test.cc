#include "engine/kernels/parallel.h"

#include <atomic>
#include <cstdint>
#include <limits>
#include <thread>

#if defined(__x86_64__)
#include <pmmintrin.h>
#include <xmmintrin.h>
#endif

#include "engine/kernels/gemm.h"
#include "gtest/gtest.h"

namespace fleettune::engine::kernels {
namespace {

// A denormal times one: zero when the thread flushes denormals.
float DenormalTimesOne() {
  volatile float denormal = std::numeric_limits<float>::denorm_min() * 1000;
  volatile float one = 1.0f;
  return denormal * one;
}

TEST(Parallel, CoversTheRangeOnce) {
  SetGemmThreads(2);
  std::vector<std::atomic<int>> seen(100000);
  ParallelFor(100000, 4, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) seen[i]++;
  });
  for (const auto& s : seen) ASSERT_EQ(s.load(), 1);
}

TEST(Parallel, EveryTeamThreadFlushesDenormals) {
  SetGemmThreads(2);  // sizes the team and flushes denormals on it
  EXPECT_EQ(DenormalTimesOne(), 0.0f);
  std::atomic<int> kept{0};
  ParallelFor(1 << 20, 1, [&](int64_t, int64_t) { kept += DenormalTimesOne() != 0.0f; });
  EXPECT_EQ(kept.load(), 0);

#if defined(__x86_64__)
  // A thread starts with its creator's mode; turn flushing off, then on again.
  // (Compare on that thread: this one treats denormal inputs as zero.)
  bool kept_without = false, flushed_with = false;
  std::thread t([&] {
    _MM_SET_FLUSH_ZERO_MODE(_MM_FLUSH_ZERO_OFF);
    _MM_SET_DENORMALS_ZERO_MODE(_MM_DENORMALS_ZERO_OFF);
    kept_without = DenormalTimesOne() != 0.0f;
    FlushDenormalsOnThisThread();
    flushed_with = DenormalTimesOne() == 0.0f;
  });
  t.join();
  EXPECT_TRUE(kept_without);
  EXPECT_TRUE(flushed_with);
#endif
}

}  // namespace
}  // namespace fleettune::engine::kernels
