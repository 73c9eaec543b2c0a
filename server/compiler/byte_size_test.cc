#include "server/compiler/byte_size.h"

#include "gtest/gtest.h"

namespace fleettune::server {
namespace {

TEST(FormatBytes, PicksTheLargestUnitBelow1024) {
  EXPECT_EQ(FormatBytes(0), "0 bytes");
  EXPECT_EQ(FormatBytes(1), "1 byte");
  EXPECT_EQ(FormatBytes(1023), "1023 bytes");
  EXPECT_EQ(FormatBytes(1024), "1 KiB");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(9542312), "9.1 MiB");
  EXPECT_EQ(FormatBytes(uint64_t{8} << 20), "8 MiB");
  EXPECT_EQ(FormatBytes(uint64_t{7} << 29), "3.5 GiB");
  EXPECT_EQ(FormatBytes(uint64_t{5} << 40), "5 TiB");
  EXPECT_EQ(FormatBytes(uint64_t{3} << 50), "3072 TiB");
}

TEST(FormatBytes, NeverPrints1024OfAUnit) {
  EXPECT_EQ(FormatBytes((uint64_t{1} << 20) - 1), "1 MiB");
  EXPECT_EQ(FormatBytes((uint64_t{1} << 20) - 60), "1023.9 KiB");
}

}  // namespace
}  // namespace fleettune::server
