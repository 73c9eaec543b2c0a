// A byte-level tokenizer: ids 0..255 are the bytes of the text, and optional
// special tokens (<bos>, <eos>, <pad>, ...) take the ids after them.
//
//   ASSIGN_OR_RETURN(ByteTokenizer tokenizer, ByteTokenizer::Create({"<eos>", "<pad>"}));
//   std::vector<int32_t> ids = tokenizer.Encode("héllo");  // 6 ids: é is 2 bytes
//   ids.push_back(*tokenizer.SpecialTokenId("<eos>"));       // 256
//   ASSIGN_OR_RETURN(std::string text, tokenizer.Decode(ids));  // "héllo<eos>"
//
// Encode never yields a special id (the text "<eos>" is five bytes), so user
// text cannot forge control tokens; callers add them by id.
//
// Thread-safety: immutable after Create(); share it freely.
#ifndef FLEETTUNE_ENGINE_TEXT_BYTE_TOKENIZER_H_
#define FLEETTUNE_ENGINE_TEXT_BYTE_TOKENIZER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/text/tokenizer.h"

namespace fleettune::engine::text {

// The special token ByteTokenizer::EndOfTextId() looks for.
inline constexpr absl::string_view kEosToken = "<eos>";

class ByteTokenizer final : public Tokenizer {
 public:
  // Ids 0..255 for bytes; no special tokens.
  ByteTokenizer() = default;

  // Create()
  //
  // Special token i gets id 256 + i. InvalidArgument for an empty or duplicate
  // name.
  static absl::StatusOr<ByteTokenizer> Create(std::vector<std::string> special_tokens);

  // 256 + the number of special tokens.
  int32_t vocab_size() const override;

  // One id per byte of `text`, equal to the byte's value (0..255).
  std::vector<int32_t> Encode(absl::string_view text) const override;

  // Bytes for ids below 256, the special token's name for the others.
  // InvalidArgument for an id outside [0, vocab_size()).
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override;

  // The id of special token `name`; NotFound if there is none.
  absl::StatusOr<int32_t> SpecialTokenId(absl::string_view name) const;

  // SpecialTokenId(kEosToken).
  absl::StatusOr<int32_t> EndOfTextId() const override;

  const std::vector<std::string>& special_tokens() const { return special_tokens_; }

 private:
  explicit ByteTokenizer(std::vector<std::string> special_tokens)
      : special_tokens_(std::move(special_tokens)) {}

  std::vector<std::string> special_tokens_;
};

}  // namespace fleettune::engine::text

#endif  // FLEETTUNE_ENGINE_TEXT_BYTE_TOKENIZER_H_
