// Text data sets for language models: a reader for the `fortune` program's
// files (Debian's fortunes package installs them in kDebianFortunesDir, one
// file per topic, entries separated by lines holding a single '%'), and the
// fixed-length next-token windows a causal language model trains on.
//
//   ASSIGN_OR_RETURN(std::vector<std::string> entries, ReadFortunesTopic("computers"));
//   std::vector<std::vector<int32_t>> streams;
//   for (const std::string& entry : entries) streams.push_back(tokenizer.Encode(entry));
//   ASSIGN_OR_RETURN(int32_t eos, tokenizer.EndOfTextId());
//   LanguageModelSplitOptions options;
//   options.context_length = 64;
//   ASSIGN_OR_RETURN(LanguageModelSplit data, MakeLanguageModelSplit(streams, eos, options));
//   // data.train.inputs: i32 [N, 64]; data.train.targets: i32 [N, 64]
//
// Files are untrusted: a bad file yields an error, never a crash. Error codes
// (file messages start with the path):
//   NotFound         a missing file or directory.
//   InvalidArgument  a file with no entries, a bad topic name, an empty list
//                    of files, bad window or split parameters, or too few
//                    tokens for one window.
// Other I/O failures carry the code that matches errno.
//
// Thread-safety: the functions share no state; call them from any thread.
#ifndef FLEETTUNE_ENGINE_TEXT_FORTUNES_H_
#define FLEETTUNE_ENGINE_TEXT_FORTUNES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/ir/tensor.h"

namespace fleettune::engine::text {

// Where Debian's fortunes package puts its topics.
inline constexpr char kDebianFortunesDir[] = "/usr/share/games/fortunes";

// ParseFortunes()
//
// Splits the contents of a fortunes file into entries: lines that are exactly
// "%" (a trailing '\r' allowed) end an entry; each entry is stripped of
// leading and trailing whitespace and dropped if nothing is left. Keeps the
// file's order and the entries' inner newlines. Never fails.
std::vector<std::string> ParseFortunes(absl::string_view contents);

// ReadFortunesFile()
//
// ParseFortunes() of the file at `path`. NotFound for a missing file;
// InvalidArgument for a file without entries.
absl::StatusOr<std::vector<std::string>> ReadFortunesFile(const std::string& path);

// ReadFortunesFiles()
//
// The entries of every file in `paths`, file after file. InvalidArgument for
// an empty list; otherwise errors as ReadFortunesFile() for the first file
// that fails.
absl::StatusOr<std::vector<std::string>> ReadFortunesFiles(absl::Span<const std::string> paths);

// ReadFortunesTopic()
//
// ReadFortunesFile(dir + "/" + topic). InvalidArgument for a topic name that
// is empty, contains '/' or starts with '.'.
absl::StatusOr<std::vector<std::string>> ReadFortunesTopic(
    absl::string_view topic, const std::string& dir = kDebianFortunesDir);

// ListFortunesTopics()
//
// The topics in `dir`, sorted: the regular files (or links to them) whose
// names have no '.', which leaves out the strfile indexes (*.dat) and
// Debian's *.u8 links. NotFound for a missing directory; InvalidArgument for
// a path that is not one.
absl::StatusOr<std::vector<std::string>> ListFortunesTopics(
    const std::string& dir = kDebianFortunesDir);

// Next-token training windows.
struct LanguageModelData {
  // i32 [N, T]: token ids.
  engine::Tensor inputs;
  // i32 [N, T]: targets[n, t] is the token after inputs[n, t] in the stream,
  // so targets[n, t] == inputs[n, t + 1] for t < T - 1.
  engine::Tensor targets;

  int64_t size() const { return inputs.shape().empty() ? 0 : inputs.shape()[0]; }
};

// MakeLanguageModelDataset()
//
// Joins the token streams (one per entry) into one stream S with `eos_id`
// between consecutive entries (not after the last), and cuts it into
// non-overlapping windows of T = context_length tokens:
//   inputs[n, t] = S[n * T + t],  targets[n, t] = S[n * T + t + 1],
// for n < N = (|S| - 1) / T; the tail that fills no whole window is dropped.
// InvalidArgument for context_length < 1, a negative eos_id or token id, or
// fewer than T + 1 tokens in S (the message gives the count).
absl::StatusOr<LanguageModelData> MakeLanguageModelDataset(
    absl::Span<const std::vector<int32_t>> streams, int32_t eos_id, int64_t context_length);

struct LanguageModelSplitOptions {
  // T, the window length; must be at least 1.
  int64_t context_length = 0;
  // Fraction of the entries held out for validation, in (0, 1).
  double validation_fraction = 0.1;
  // Seeds the shuffle of the entries; one seed always gives the same split.
  uint64_t seed = 0;
};

struct LanguageModelSplit {
  LanguageModelData train, validation;
};

// MakeLanguageModelSplit()
//
// Splits the entries, not the windows, so that no entry feeds both sides:
// shuffles the entry indices with std::mt19937_64(options.seed) and a portable
// Fisher-Yates shuffle (the same on every standard library), holds out the
// last round(k * validation_fraction) of the k entries (at least 1, at most
// k - 1), and gives each side's entries, in their original order, to
// MakeLanguageModelDataset(). InvalidArgument for fewer than 2 entries, a
// validation_fraction outside (0, 1), and as MakeLanguageModelDataset() for
// either side (the message says which).
absl::StatusOr<LanguageModelSplit> MakeLanguageModelSplit(
    absl::Span<const std::vector<int32_t>> streams, int32_t eos_id,
    const LanguageModelSplitOptions& options);

}  // namespace fleettune::engine::text

#endif  // FLEETTUNE_ENGINE_TEXT_FORTUNES_H_
