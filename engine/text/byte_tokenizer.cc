#include "engine/text/byte_tokenizer.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fleettune::engine::text {
namespace {

constexpr int32_t kByteCount = 256;

}  // namespace

absl::StatusOr<ByteTokenizer> ByteTokenizer::Create(std::vector<std::string> special_tokens) {
  absl::flat_hash_set<absl::string_view> seen;
  for (size_t i = 0; i < special_tokens.size(); ++i) {
    if (special_tokens[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("special token ", i, ": empty name"));
    }
    if (!seen.insert(special_tokens[i]).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("special token ", i, ": duplicate name \"", special_tokens[i], "\""));
    }
  }
  return ByteTokenizer(std::move(special_tokens));
}

int32_t ByteTokenizer::vocab_size() const {
  return kByteCount + static_cast<int32_t>(special_tokens_.size());
}

std::vector<int32_t> ByteTokenizer::Encode(absl::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

absl::StatusOr<std::string> ByteTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string text;
  text.reserve(ids.size());
  const int32_t vocab = vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, ": id ", id, " outside the vocabulary [0, ", vocab, ")"));
    }
    if (id < kByteCount) {
      text.push_back(static_cast<char>(id));
    } else {
      text += special_tokens_[id - kByteCount];
    }
  }
  return text;
}

absl::StatusOr<int32_t> ByteTokenizer::SpecialTokenId(absl::string_view name) const {
  for (size_t i = 0; i < special_tokens_.size(); ++i) {
    if (special_tokens_[i] == name) return kByteCount + static_cast<int32_t>(i);
  }
  return absl::NotFoundError(absl::StrCat("no special token \"", name, "\""));
}

absl::StatusOr<int32_t> ByteTokenizer::EndOfTextId() const { return SpecialTokenId(kEosToken); }

}  // namespace fleettune::engine::text
