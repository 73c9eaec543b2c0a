#include "engine/kernels/isa.h"

#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::kernels {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

TEST(Isa, NamesRoundTripAndUnknownNamesAreRejected) {
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512}) {
    ASSERT_OK_AND_ASSIGN(Isa parsed, ParseIsa(IsaName(isa)));
    EXPECT_EQ(parsed, isa);
  }
  EXPECT_THAT(ParseIsa("sse9"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("sse9")));
  EXPECT_THAT(ParseIsa(""), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Isa, ClassFeaturesGuaranteeALevel) {
  EXPECT_EQ(IsaForFeatures({"avx2", "fma"}), Isa::kAvx2);
  EXPECT_EQ(IsaForFeatures({"avx2"}), Isa::kGeneric) << "AVX2 kernels use FMA too";
  EXPECT_EQ(IsaForFeatures({"avx2", "fma", "avx512f"}), Isa::kAvx512);
  EXPECT_EQ(IsaForFeatures({"asimd", "asimddp"}), Isa::kGeneric);
  EXPECT_EQ(IsaForFeatures({}), Isa::kGeneric);
}

TEST(Isa, TheHostRunsWhatItSupportsAndNothingWider) {
  EXPECT_TRUE(HostSupports(Isa::kGeneric));
  EXPECT_TRUE(HostSupports(BestHostIsa()));
  if (HostSupports(Isa::kAvx512)) {
    EXPECT_TRUE(HostSupports(Isa::kAvx2));
  }
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512}) {
    SetKernelIsa(isa);
    EXPECT_EQ(KernelIsa(), HostSupports(isa) ? isa : BestHostIsa());
  }
  SetKernelIsa(Isa::kGeneric);
  EXPECT_EQ(KernelIsa(), Isa::kGeneric);
}

}  // namespace
}  // namespace fleettune::engine::kernels
