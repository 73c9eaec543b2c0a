#include "engine/text/fortunes.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/base/file.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/tensor.h"
#include "engine/text/byte_tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::text {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// engine/base/status_matchers.h has no IsOkAndHolds (and ::testing::Optional needs operator!).
MATCHER_P(IsOkAndHolds, matcher, "") {
  if (!arg.ok()) {
    *result_listener << "whose status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(matcher, *arg, result_listener);
}

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

std::vector<int32_t> Row(const Tensor& t, int64_t n) {
  const int64_t cols = t.shape()[1];
  return std::vector<int32_t>(t.i32() + n * cols, t.i32() + (n + 1) * cols);
}

// ---- Parsing and reading ----

TEST(ParseFortunes, SplitsOnPercentLinesAndStrips) {
  EXPECT_THAT(ParseFortunes("First.\n%\n  Second,\n\ttwo lines.  \n%\nThird\n%\n"),
              ElementsAre("First.", "Second,\n\ttwo lines.", "Third"));
}

TEST(ParseFortunes, DropsEmptyEntriesAndKeepsPercentInsideLines) {
  EXPECT_THAT(ParseFortunes("%\n\n%\n100% sure\n%%\n 50 %\n%\r\nlast"),
              ElementsAre("100% sure\n%%\n 50 %", "last"));
  EXPECT_THAT(ParseFortunes(""), IsEmpty());
  EXPECT_THAT(ParseFortunes("%\n  \n%\n"), IsEmpty());
}

TEST(ReadFortunesFile, ReadsEntries) {
  const std::string path = TempPath("two_entries");
  ASSERT_OK(WriteFileAtomically(path, "One.\n%\nTwo.\n"));
  EXPECT_THAT(ReadFortunesFile(path), IsOkAndHolds(ElementsAre("One.", "Two.")));
}

TEST(ReadFortunesFile, NamesAMissingFile) {
  const std::string path = TempPath("no_such_topic");
  EXPECT_THAT(ReadFortunesFile(path), StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
}

TEST(ReadFortunesFile, RejectsAFileWithoutEntries) {
  const std::string path = TempPath("empty_topic");
  ASSERT_OK(WriteFileAtomically(path, "%\n\n%\n"));
  EXPECT_THAT(ReadFortunesFile(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(path + ": no entries")));
}

TEST(ReadFortunesFiles, ConcatenatesFilesInOrder) {
  const std::string a = TempPath("topic_a"), b = TempPath("topic_b");
  ASSERT_OK(WriteFileAtomically(a, "a1\n%\na2\n"));
  ASSERT_OK(WriteFileAtomically(b, "b1\n"));
  EXPECT_THAT(ReadFortunesFiles({b, a}), IsOkAndHolds(ElementsAre("b1", "a1", "a2")));
  EXPECT_THAT(ReadFortunesFiles({a, TempPath("missing_b")}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing_b")));
  EXPECT_THAT(ReadFortunesFiles({}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no fortunes files")));
}

TEST(ReadFortunesTopic, ReadsFromTheDirectoryAndRejectsPathsAsTopics) {
  const std::string dir = TempPath("fortunes_dir");
  mkdir(dir.c_str(), 0755);
  ASSERT_OK(WriteFileAtomically(dir + "/cookie", "Yum.\n"));
  ASSERT_OK(WriteFileAtomically(dir + "/cookie.dat", "index"));
  unlink((dir + "/cookie.u8").c_str());  // left over from an earlier run
  ASSERT_EQ(symlink("cookie", (dir + "/cookie.u8").c_str()), 0);
  ASSERT_OK(WriteFileAtomically(dir + "/men-women", "He said.\n%\nShe said.\n"));
  mkdir((dir + "/off").c_str(), 0755);
  EXPECT_THAT(ReadFortunesTopic("cookie", dir), IsOkAndHolds(ElementsAre("Yum.")));
  EXPECT_THAT(ListFortunesTopics(dir), IsOkAndHolds(ElementsAre("cookie", "men-women")));
  for (const char* bad : {"", "../cookie", "off/x", ".hidden"}) {
    EXPECT_THAT(ReadFortunesTopic(bad, dir),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad fortunes topic")))
        << bad;
  }
  EXPECT_THAT(ReadFortunesTopic("nope", dir),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(dir + "/nope")));
  EXPECT_THAT(ListFortunesTopics(dir + "/absent"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(dir + "/absent")));
  EXPECT_THAT(ListFortunesTopics(dir + "/cookie"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a directory")));
}

// ---- Windows ----

TEST(MakeLanguageModelDataset, CutsNonOverlappingWindowsWithShiftedTargets) {
  // Joined: 1 2 3 [9] 4 5 [9] 6 7 8 -> 10 tokens; T = 3 gives (10 - 1) / 3 = 3 windows.
  const std::vector<std::vector<int32_t>> streams = {{1, 2, 3}, {4, 5}, {6, 7, 8}};
  ASSERT_OK_AND_ASSIGN(LanguageModelData data, MakeLanguageModelDataset(streams, 9, 3));
  EXPECT_EQ(data.inputs.dtype(), DType::kI32);
  EXPECT_EQ(data.targets.dtype(), DType::kI32);
  EXPECT_EQ(data.inputs.shape(), (Shape{3, 3}));
  EXPECT_EQ(data.targets.shape(), (Shape{3, 3}));
  EXPECT_EQ(data.size(), 3);
  EXPECT_THAT(Row(data.inputs, 0), ElementsAre(1, 2, 3));
  EXPECT_THAT(Row(data.targets, 0), ElementsAre(2, 3, 9));
  EXPECT_THAT(Row(data.inputs, 1), ElementsAre(9, 4, 5));
  EXPECT_THAT(Row(data.targets, 1), ElementsAre(4, 5, 9));
  EXPECT_THAT(Row(data.inputs, 2), ElementsAre(9, 6, 7));
  EXPECT_THAT(Row(data.targets, 2), ElementsAre(6, 7, 8));
}

TEST(MakeLanguageModelDataset, DropsTheTailThatFillsNoWindow) {
  // 7 tokens, T = 4: one window (its targets need token 5); tokens 5 and 6 are dropped.
  ASSERT_OK_AND_ASSIGN(LanguageModelData data,
                       MakeLanguageModelDataset({{0, 1, 2, 3, 4, 5, 6}}, 7, 4));
  EXPECT_EQ(data.inputs.shape(), (Shape{1, 4}));
  EXPECT_THAT(Row(data.targets, 0), ElementsAre(1, 2, 3, 4));
  // Exactly T + 1 tokens make one window.
  ASSERT_OK_AND_ASSIGN(data, MakeLanguageModelDataset({{0, 1}, {2}}, 7, 3));
  EXPECT_THAT(Row(data.inputs, 0), ElementsAre(0, 1, 7));
  EXPECT_THAT(Row(data.targets, 0), ElementsAre(1, 7, 2));
}

TEST(MakeLanguageModelDataset, RejectsBadParametersAndTooFewTokens) {
  EXPECT_THAT(MakeLanguageModelDataset({{1, 2, 3}}, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("context_length 0")));
  EXPECT_THAT(MakeLanguageModelDataset({{1, 2, 3}}, -1, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eos_id -1")));
  EXPECT_THAT(MakeLanguageModelDataset({{1}, {2, -5}}, 0, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("stream 1: token id -5")));
  EXPECT_THAT(MakeLanguageModelDataset({{1, 2}, {3}}, 0, 4),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("4 tokens, too few for one window of 4")));
  EXPECT_THAT(MakeLanguageModelDataset({}, 0, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("0 tokens")));
}

// ---- Train / validation ----

// Entry i is {100 * i, 100 * i + 1, ..., 100 * i + 9}, so a token tells its entry.
std::vector<std::vector<int32_t>> NumberedStreams(int count) {
  std::vector<std::vector<int32_t>> streams(count);
  for (int i = 0; i < count; ++i) {
    for (int k = 0; k < 10; ++k) streams[i].push_back(100 * i + k);
  }
  return streams;
}

std::set<int32_t> EntriesIn(const LanguageModelData& data, int32_t eos) {
  std::set<int32_t> entries;
  for (const Tensor* t : {&data.inputs, &data.targets}) {
    for (int64_t i = 0; i < t->num_elements(); ++i) {
      if (t->i32()[i] != eos) entries.insert(t->i32()[i] / 100);
    }
  }
  return entries;
}

TEST(MakeLanguageModelSplit, SplitsEntriesDeterministicallyWithoutSharing) {
  const auto streams = NumberedStreams(20);
  LanguageModelSplitOptions options;
  options.context_length = 8;
  options.validation_fraction = 0.25;
  options.seed = 42;
  ASSERT_OK_AND_ASSIGN(LanguageModelSplit split, MakeLanguageModelSplit(streams, 99999, options));
  const std::set<int32_t> train = EntriesIn(split.train, 99999);
  const std::set<int32_t> validation = EntriesIn(split.validation, 99999);
  // 5 of 20 entries held out: (5 * 10 + 4 eos - 1) / 8 = 6 windows; train (150 + 14 - 1) / 8 = 20.
  EXPECT_EQ(split.validation.inputs.shape(), (Shape{6, 8}));
  EXPECT_EQ(split.train.inputs.shape(), (Shape{20, 8}));
  EXPECT_EQ(split.train.targets.shape(), (Shape{20, 8}));
  EXPECT_LE(validation.size(), 5u);
  for (int32_t e : validation) EXPECT_EQ(train.count(e), 0u) << e;

  ASSERT_OK_AND_ASSIGN(LanguageModelSplit again, MakeLanguageModelSplit(streams, 99999, options));
  EXPECT_EQ(Row(again.validation.inputs, 0), Row(split.validation.inputs, 0));
  EXPECT_EQ(Row(again.train.targets, 19), Row(split.train.targets, 19));
  options.seed = 43;
  ASSERT_OK_AND_ASSIGN(LanguageModelSplit other, MakeLanguageModelSplit(streams, 99999, options));
  EXPECT_NE(EntriesIn(other.validation, 99999), validation);
}

TEST(MakeLanguageModelSplit, KeepsEachSidesEntriesInFileOrder) {
  LanguageModelSplitOptions options;
  options.context_length = 4;
  options.validation_fraction = 0.5;
  ASSERT_OK_AND_ASSIGN(LanguageModelSplit split,
                       MakeLanguageModelSplit(NumberedStreams(6), 99999, options));
  for (const LanguageModelData* side : {&split.train, &split.validation}) {
    int32_t last = -1;
    for (int64_t i = 0; i < side->inputs.num_elements(); ++i) {
      const int32_t id = side->inputs.i32()[i];
      if (id == 99999) continue;
      EXPECT_GT(id, last);
      last = id;
    }
  }
}

TEST(MakeLanguageModelSplit, RejectsBadOptionsAndNamesTheShortSide) {
  LanguageModelSplitOptions options;
  options.context_length = 4;
  for (double bad : {0.0, 1.0, -0.5, 2.0}) {
    options.validation_fraction = bad;
    EXPECT_THAT(MakeLanguageModelSplit(NumberedStreams(4), 7, options),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("validation_fraction")));
  }
  options.validation_fraction = 0.1;
  EXPECT_THAT(MakeLanguageModelSplit(NumberedStreams(1), 7, options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1 entries")));
  // 10 entries, 0.1 held out: one entry of 10 tokens cannot fill a window of 10 plus one.
  options.context_length = 10;
  EXPECT_THAT(MakeLanguageModelSplit(NumberedStreams(10), 7, options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("validation split (1 of 10 entries): 10 tokens")));
  options.context_length = 0;
  EXPECT_THAT(MakeLanguageModelSplit(NumberedStreams(10), 7, options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("context_length 0")));
}

// ---- Debian's fortunes, when installed ----

bool Exists(const std::string& path) { return access(path.c_str(), R_OK) == 0; }

TEST(RealData, ReadsDebianFortunesTopics) {
  const std::string path = absl::StrCat(kDebianFortunesDir, "/fortunes");
  if (!Exists(path)) GTEST_SKIP() << path << " missing; run tools/setup.sh";
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> topics, ListFortunesTopics());
  EXPECT_GE(topics.size(), 20u);
  EXPECT_THAT(topics, ::testing::Contains("computers"));
  for (const std::string& t : topics) EXPECT_FALSE(absl::StrContains(t, '.')) << t;

  ASSERT_OK_AND_ASSIGN(std::vector<std::string> entries, ReadFortunesTopic("fortunes"));
  EXPECT_GT(entries.size(), 400u);  // 431 '%' lines in Debian 12's file
  EXPECT_EQ(entries[0], "A day for firm decisions!!!!!  Or is it?");
  for (const std::string& e : entries) {
    EXPECT_FALSE(e.empty());
    EXPECT_FALSE(absl::StrContains(e, "\n%\n")) << e;
  }

  ByteTokenizer bytes;
  std::vector<std::vector<int32_t>> streams;
  for (const std::string& e : entries) streams.push_back(bytes.Encode(e));
  LanguageModelSplitOptions options;
  options.context_length = 128;
  ASSERT_OK_AND_ASSIGN(LanguageModelSplit split, MakeLanguageModelSplit(streams, 10, options));
  EXPECT_GT(split.train.size(), 100);
  EXPECT_GT(split.validation.size(), 10);
  EXPECT_EQ(split.train.inputs.shape()[1], 128);
}

}  // namespace
}  // namespace fleettune::engine::text
