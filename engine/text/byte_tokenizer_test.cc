#include "engine/text/byte_tokenizer.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::text {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// engine/base/status_matchers.h has no IsOkAndHolds (and ::testing::Optional needs operator!).
MATCHER_P(IsOkAndHolds, matcher, "") {
  if (!arg.ok()) {
    *result_listener << "whose status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(matcher, *arg, result_listener);
}

TEST(ByteTokenizer, EncodesEachByteAsItsValue) {
  ByteTokenizer tokenizer;
  EXPECT_EQ(tokenizer.vocab_size(), 256);
  EXPECT_THAT(tokenizer.Encode("Aé"), ElementsAre(65, 0xC3, 0xA9));
  EXPECT_THAT(tokenizer.Encode(std::string("\0\xff", 2)), ElementsAre(0, 255));
  EXPECT_THAT(tokenizer.Encode(""), ElementsAre());
}

TEST(ByteTokenizer, RoundTripsEveryByte) {
  ByteTokenizer tokenizer;
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  ASSERT_OK_AND_ASSIGN(std::string back, tokenizer.Decode(tokenizer.Encode(all)));
  EXPECT_EQ(back, all);
}

TEST(ByteTokenizer, GivesSpecialTokensTheIdsAfterTheBytes) {
  ASSERT_OK_AND_ASSIGN(ByteTokenizer tokenizer, ByteTokenizer::Create({"<bos>", "<eos>", "<pad>"}));
  EXPECT_EQ(tokenizer.vocab_size(), 259);
  EXPECT_THAT(tokenizer.SpecialTokenId("<bos>"), IsOkAndHolds(256));
  EXPECT_THAT(tokenizer.SpecialTokenId("<pad>"), IsOkAndHolds(258));
  EXPECT_THAT(tokenizer.EndOfTextId(), IsOkAndHolds(257));
  EXPECT_THAT(tokenizer.SpecialTokenId("<unk>"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("<unk>")));
  EXPECT_THAT(tokenizer.special_tokens(), ElementsAre("<bos>", "<eos>", "<pad>"));
}

TEST(ByteTokenizer, DecodesSpecialTokensToTheirNames) {
  ASSERT_OK_AND_ASSIGN(ByteTokenizer tokenizer, ByteTokenizer::Create({"<bos>", "<eos>"}));
  std::vector<int32_t> ids = {256};
  for (int32_t id : tokenizer.Encode("hi")) ids.push_back(id);
  ids.push_back(257);
  EXPECT_THAT(tokenizer.Decode(ids), IsOkAndHolds(std::string("<bos>hi<eos>")));
}

TEST(ByteTokenizer, EncodesSpecialTokenNamesInTextAsPlainBytes) {
  ASSERT_OK_AND_ASSIGN(ByteTokenizer tokenizer, ByteTokenizer::Create({"<eos>"}));
  EXPECT_THAT(tokenizer.Encode("<eos>"), ElementsAre('<', 'e', 'o', 's', '>'));
}

TEST(ByteTokenizer, HasNoEndOfTextWithoutEos) {
  ASSERT_OK_AND_ASSIGN(ByteTokenizer tokenizer, ByteTokenizer::Create({"<pad>"}));
  EXPECT_THAT(tokenizer.EndOfTextId(), StatusIs(absl::StatusCode::kNotFound, HasSubstr("<eos>")));
}

TEST(ByteTokenizer, DecodeRejectsIdsOutsideTheVocabulary) {
  ASSERT_OK_AND_ASSIGN(ByteTokenizer tokenizer, ByteTokenizer::Create({"<eos>"}));
  EXPECT_THAT(tokenizer.Decode({104, 257}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("token 1: id 257 outside the vocabulary [0, 257)")));
  EXPECT_THAT(tokenizer.Decode({-3}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token 0: id -3")));
}

TEST(ByteTokenizer, CreateRejectsEmptyAndDuplicateNames) {
  EXPECT_THAT(ByteTokenizer::Create({"<eos>", ""}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("special token 1: empty")));
  EXPECT_THAT(ByteTokenizer::Create({"<eos>", "<pad>", "<eos>"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("special token 2: duplicate name \"<eos>\"")));
}

}  // namespace
}  // namespace fleettune::engine::text
