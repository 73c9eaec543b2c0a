#include "engine/base/sha256.h"

#include "gtest/gtest.h"

namespace fleettune::engine {
namespace {

TEST(Sha256, MatchesKnownVectors) {
  // FIPS 180-2 test vectors.
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, RecognizesHexDigests) {
  EXPECT_TRUE(IsSha256Hex(Sha256Hex("x")));
  EXPECT_FALSE(IsSha256Hex("abc"));
  EXPECT_FALSE(IsSha256Hex(std::string(64, 'G')));
  EXPECT_FALSE(IsSha256Hex(std::string(64, 'A')));
}

TEST(Sha256, IncrementalEqualsOneShot) {
  Sha256 hash;
  hash.Update("a");
  hash.Update("");
  hash.Update("bc");
  EXPECT_EQ(hash.HexDigest(), Sha256Hex("abc"));
}

TEST(Sha256, UpdateIntIsLittleEndianEightBytes) {
  Sha256 hash;
  hash.UpdateInt(0x0102030405060708u);
  EXPECT_EQ(hash.HexDigest(), Sha256Hex(std::string("\x08\x07\x06\x05\x04\x03\x02\x01", 8)));
  Sha256 a, b;  // lengths keep adjacent fields apart: "ab"+"c" differs from "a"+"bc"
  a.UpdateInt(2);
  a.Update("ab");
  a.UpdateInt(1);
  a.Update("c");
  b.UpdateInt(1);
  b.Update("a");
  b.UpdateInt(2);
  b.Update("bc");
  EXPECT_NE(a.HexDigest(), b.HexDigest());
}

}  // namespace
}  // namespace fleettune::engine
