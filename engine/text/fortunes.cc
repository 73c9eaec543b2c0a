#include "engine/text/fortunes.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::text {
namespace {

// Debian's largest topic is 0.25 MB; refuse absurd files before reading them.
constexpr uint64_t kMaxFortunesBytes = uint64_t{64} << 20;

// A uniform integer in [0, bound) from whole generator outputs (std::uniform_int_distribution's
// algorithm differs between standard libraries; this one does not).
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  for (;;) {
    const uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

}  // namespace

std::vector<std::string> ParseFortunes(absl::string_view contents) {
  std::vector<std::string> entries;
  std::string entry;
  const auto finish = [&] {
    const absl::string_view stripped = absl::StripAsciiWhitespace(entry);
    if (!stripped.empty()) entries.emplace_back(stripped);
    entry.clear();
  };
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    if (line == "%" || line == "%\r") {
      finish();
    } else {
      absl::StrAppend(&entry, line, "\n");
    }
  }
  finish();
  return entries;
}

absl::StatusOr<std::vector<std::string>> ReadFortunesFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string contents, ReadFileToString(path, kMaxFortunesBytes));
  std::vector<std::string> entries = ParseFortunes(contents);
  if (entries.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no entries"));
  }
  return entries;
}

absl::StatusOr<std::vector<std::string>> ReadFortunesFiles(absl::Span<const std::string> paths) {
  if (paths.empty()) return absl::InvalidArgumentError("no fortunes files given");
  std::vector<std::string> all;
  for (const std::string& path : paths) {
    ASSIGN_OR_RETURN(std::vector<std::string> entries, ReadFortunesFile(path));
    all.insert(all.end(), std::make_move_iterator(entries.begin()),
               std::make_move_iterator(entries.end()));
  }
  return all;
}

absl::StatusOr<std::vector<std::string>> ReadFortunesTopic(absl::string_view topic,
                                                           const std::string& dir) {
  if (topic.empty() || absl::StrContains(topic, '/') || topic.front() == '.') {
    return absl::InvalidArgumentError(absl::StrCat("bad fortunes topic name \"", topic, "\""));
  }
  return ReadFortunesFile(absl::StrCat(dir, "/", topic));
}

absl::StatusOr<std::vector<std::string>> ListFortunesTopics(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(dir, ": no such directory"));
    if (err == ENOTDIR) return absl::InvalidArgumentError(absl::StrCat(dir, ": not a directory"));
    return absl::ErrnoToStatus(err, absl::StrCat(dir, ": cannot open"));
  }
  std::vector<std::string> topics;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.find('.') != std::string::npos) continue;
    struct stat st;
    if (stat(absl::StrCat(dir, "/", name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      topics.push_back(name);
    }
  }
  closedir(d);
  std::sort(topics.begin(), topics.end());
  return topics;
}

absl::StatusOr<LanguageModelData> MakeLanguageModelDataset(
    absl::Span<const std::vector<int32_t>> streams, int32_t eos_id, int64_t context_length) {
  if (context_length < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("context_length ", context_length, " is not positive"));
  }
  if (eos_id < 0) return absl::InvalidArgumentError(absl::StrCat("eos_id ", eos_id, " < 0"));
  int64_t total = streams.empty() ? 0 : static_cast<int64_t>(streams.size()) - 1;
  for (size_t i = 0; i < streams.size(); ++i) {
    for (int32_t id : streams[i]) {
      if (id < 0) {
        return absl::InvalidArgumentError(absl::StrCat("stream ", i, ": token id ", id, " < 0"));
      }
    }
    total += static_cast<int64_t>(streams[i].size());
  }
  if (total < context_length + 1) {
    return absl::InvalidArgumentError(absl::StrCat(total, " tokens, too few for one window of ",
                                                   context_length, " plus its next token"));
  }
  std::vector<int32_t> joined;
  joined.reserve(static_cast<size_t>(total));
  for (size_t i = 0; i < streams.size(); ++i) {
    if (i > 0) joined.push_back(eos_id);
    joined.insert(joined.end(), streams[i].begin(), streams[i].end());
  }
  const int64_t n = (total - 1) / context_length;
  LanguageModelData data;
  data.inputs = Tensor(DType::kI32, {n, context_length});
  data.targets = Tensor(DType::kI32, {n, context_length});
  const size_t count = static_cast<size_t>(n * context_length);
  std::copy_n(joined.begin(), count, data.inputs.i32());
  std::copy_n(joined.begin() + 1, count, data.targets.i32());
  return data;
}

absl::StatusOr<LanguageModelSplit> MakeLanguageModelSplit(
    absl::Span<const std::vector<int32_t>> streams, int32_t eos_id,
    const LanguageModelSplitOptions& options) {
  const double fraction = options.validation_fraction;
  if (!(fraction > 0.0 && fraction < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("validation_fraction ", fraction, " outside (0, 1)"));
  }
  const size_t k = streams.size();
  if (k < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(k, " entries; a train/validation split needs at least 2"));
  }
  std::vector<size_t> order(k);
  for (size_t i = 0; i < k; ++i) order[i] = i;
  std::mt19937_64 rng(options.seed);
  for (size_t i = k; i > 1; --i) std::swap(order[i - 1], order[UniformBelow(rng, i)]);
  const auto held_out = static_cast<size_t>(std::clamp<int64_t>(
      std::llround(static_cast<double>(k) * fraction), 1, static_cast<int64_t>(k) - 1));
  std::vector<size_t> train_ids(order.begin(), order.end() - held_out);
  std::vector<size_t> validation_ids(order.end() - held_out, order.end());
  std::sort(train_ids.begin(), train_ids.end());
  std::sort(validation_ids.begin(), validation_ids.end());

  LanguageModelSplit split;
  for (auto [ids, out, name] :
       {std::make_tuple(&train_ids, &split.train, "train"),
        std::make_tuple(&validation_ids, &split.validation, "validation")}) {
    std::vector<std::vector<int32_t>> side;
    side.reserve(ids->size());
    for (size_t i : *ids) side.push_back(streams[i]);
    absl::StatusOr<LanguageModelData> data =
        MakeLanguageModelDataset(side, eos_id, options.context_length);
    if (!data.ok()) {
      return absl::Status(data.status().code(),
                          absl::StrCat(name, " split (", ids->size(), " of ", k,
                                       " entries): ", data.status().message()));
    }
    *out = *std::move(data);
  }
  return split;
}

}  // namespace fleettune::engine::text
