// The interface that text models and data sets use to turn text into token ids
// and back, so a caller can pick the byte-level or the GPT-2 BPE tokenizer
// (byte_tokenizer.h, bpe_tokenizer.h) at run time.
//
//   std::unique_ptr<Tokenizer> tokenizer = ...;
//   std::vector<int32_t> ids = tokenizer->Encode("Hello");
//   ASSIGN_OR_RETURN(std::string text, tokenizer->Decode(ids));
//
// Thread-safety: implementations are safe to use from several threads at once
// through const methods.
#ifndef FLEETTUNE_ENGINE_TEXT_TOKENIZER_H_
#define FLEETTUNE_ENGINE_TEXT_TOKENIZER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace fleettune::engine::text {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Number of ids; every id is in [0, vocab_size()).
  virtual int32_t vocab_size() const = 0;

  // Token ids of `text`, read as bytes (UTF-8 expected, any bytes accepted).
  // Never fails. Special-token names inside `text` are ordinary text.
  virtual std::vector<int32_t> Encode(absl::string_view text) const = 0;

  // The bytes that `ids` stand for. InvalidArgument, naming the position, for
  // an id outside [0, vocab_size()).
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const = 0;

  // The id that separates documents (<eos>, GPT-2's <|endoftext|>).
  // NotFound when the vocabulary has none.
  virtual absl::StatusOr<int32_t> EndOfTextId() const = 0;
};

}  // namespace fleettune::engine::text

#endif  // FLEETTUNE_ENGINE_TEXT_TOKENIZER_H_
