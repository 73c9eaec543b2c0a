#include "engine/text/bpe_tokenizer.h"

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "engine/text/unicode_classes.h"

namespace fleettune::engine::text {
namespace {

using Json = nlohmann::json;

// GPT-2's encoder.json is 1.0 MB and vocab.bpe 0.5 MB; refuse absurd files before reading them.
constexpr uint64_t kMaxFileBytes = uint64_t{64} << 20;
// Pieces this long or shorter are cached; longer ones are rare and would bloat the cache.
constexpr size_t kMaxCachedPieceBytes = 64;
// The cache starts over when it reaches this many pieces, so it cannot grow without bound.
constexpr size_t kMaxCacheEntries = size_t{1} << 16;

// ---- UTF-8 ----

// A code point, or kIllFormed for a byte that starts no well-formed sequence.
constexpr char32_t kIllFormed = 0xFFFFFFFF;

// Decodes the sequence at text[pos] into *cp and returns its length; an ill-formed byte gives
// length 1 and kIllFormed. Well-formed means Unicode's table 3-7: shortest form, no surrogates,
// nothing above U+10FFFF.
size_t DecodeUtf8(absl::string_view text, size_t pos, char32_t* cp) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t len;
  char32_t value;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
    value = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    value = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    value = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // no overlong forms
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    *cp = kIllFormed;
    return 1;
  }
  if (pos + len > text.size()) {
    *cp = kIllFormed;
    return 1;
  }
  for (size_t i = 1; i < len; ++i) {
    const unsigned char b = byte(pos + i);
    if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) {
      *cp = kIllFormed;
      return 1;
    }
    value = (value << 6) | (b & 0x3F);
  }
  *cp = value;
  return len;
}

// The classes that the pre-tokenization pattern tells apart.
enum class CharClass : uint8_t { kLetter, kNumber, kWhitespace, kOther };

CharClass Classify(char32_t cp) {
  if (cp == kIllFormed) return CharClass::kOther;
  if (IsLetter(cp)) return CharClass::kLetter;
  if (IsNumber(cp)) return CharClass::kNumber;
  if (IsWhitespace(cp)) return CharClass::kWhitespace;
  return CharClass::kOther;
}

struct Char {
  size_t offset;  // of its first byte in the text
  char32_t cp;
  CharClass cls;
};

// Inverse of Gpt2ByteToUnicode(): code point -> byte, -1 outside the alphabet.
int ByteOfChar(char32_t cp) {
  static const std::array<int16_t, 0x144> inverse = [] {
    std::array<int16_t, 0x144> table;
    table.fill(-1);
    const std::array<char32_t, 256>& forward = Gpt2ByteToUnicode();
    for (int b = 0; b < 256; ++b) table[forward[b]] = static_cast<int16_t>(b);
    return table;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

// Translates a token spelled in GPT-2's alphabet (UTF-8) into the bytes it stands for.
absl::StatusOr<std::string> TokenToBytes(absl::string_view token) {
  std::string bytes;
  bytes.reserve(token.size());
  for (size_t pos = 0; pos < token.size();) {
    char32_t cp;
    pos += DecodeUtf8(token, pos, &cp);
    const int b = cp == kIllFormed ? -1 : ByteOfChar(cp);
    if (b < 0) {
      return absl::InvalidArgumentError(
          cp == kIllFormed ? "ill-formed UTF-8"
                           : absl::StrFormat("character U+%04X outside GPT-2's byte alphabet",
                                             static_cast<uint32_t>(cp)));
    }
    bytes.push_back(static_cast<char>(b));
  }
  return bytes;
}

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

const std::array<char32_t, 256>& Gpt2ByteToUnicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

std::vector<absl::string_view> Gpt2PreTokenize(absl::string_view text) {
  std::vector<Char> chars;
  chars.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    char32_t cp;
    const size_t len = DecodeUtf8(text, pos, &cp);
    chars.push_back({pos, cp, Classify(cp)});
    pos += len;
  }
  const size_t n = chars.size();
  const auto offset = [&](size_t i) { return i < n ? chars[i].offset : text.size(); };
  const auto is = [&](size_t i, char32_t cp) { return i < n && chars[i].cp == cp; };
  // The end of the run of class `cls` that starts at i.
  const auto run_end = [&](size_t i, CharClass cls) {
    while (i < n && chars[i].cls == cls) ++i;
    return i;
  };

  std::vector<absl::string_view> pieces;
  size_t i = 0;
  while (i < n) {
    size_t end;
    if (is(i, '\'') && (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd'))) {
      end = i + 2;  // 's|'t|'m|'d
    } else if (is(i, '\'') &&
               ((is(i + 1, 'r') && is(i + 2, 'e')) || (is(i + 1, 'v') && is(i + 2, 'e')) ||
                (is(i + 1, 'l') && is(i + 2, 'l')))) {
      end = i + 3;  // 're|'ve|'ll
    } else if (is(i, ' ') && i + 1 < n && chars[i + 1].cls != CharClass::kWhitespace) {
      end = run_end(i + 1, chars[i + 1].cls);  // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+"
    } else if (chars[i].cls != CharClass::kWhitespace) {
      end = run_end(i, chars[i].cls);  // the same three without the space
    } else {
      // \s+(?!\S) takes the whole run at the end of the text, or all but its last character
      // before a non-space (which the next piece's optional ' ' may claim); a single space
      // before a non-space falls through to \s+.
      const size_t run = run_end(i, CharClass::kWhitespace);
      end = (run == n || run - i == 1) ? run : run - 1;
    }
    pieces.push_back(text.substr(offset(i), offset(end) - offset(i)));
    i = end;
  }
  return pieces;
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromFiles(
    const std::string& encoder_json_path, const std::string& vocab_bpe_path) {
  ASSIGN_OR_RETURN(std::string encoder_json, ReadFileToString(encoder_json_path, kMaxFileBytes));
  ASSIGN_OR_RETURN(std::string vocab_bpe, ReadFileToString(vocab_bpe_path, kMaxFileBytes));
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer = FromStrings(encoder_json, vocab_bpe);
  if (!tokenizer.ok()) {
    // FromStrings' messages start with the file's name; put its path there instead.
    absl::string_view message = tokenizer.status().message();
    const bool in_merges = absl::ConsumePrefix(&message, "vocab.bpe");
    if (!in_merges) absl::ConsumePrefix(&message, "encoder.json");
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(in_merges ? vocab_bpe_path : encoder_json_path, message));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromDirectory(const std::string& dir) {
  return FromFiles(dir + "/encoder.json", dir + "/vocab.bpe");
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromStrings(
    absl::string_view encoder_json, absl::string_view vocab_bpe) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());

  // encoder.json: {"token": id, ...} with ids exactly 0..N-1.
  const Json vocab = Json::parse(encoder_json.begin(), encoder_json.end(), /*cb=*/nullptr,
                                 /*allow_exceptions=*/false);
  if (vocab.is_discarded()) return absl::InvalidArgumentError("encoder.json: invalid JSON");
  if (!vocab.is_object()) return absl::InvalidArgumentError("encoder.json: not a JSON object");
  const size_t vocab_size = vocab.size();
  if (vocab_size > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("encoder.json: too many tokens");
  }
  t->token_bytes_.resize(vocab_size);
  std::vector<bool> seen(vocab_size, false);
  for (const auto& [token, value] : vocab.items()) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() >= static_cast<int64_t>(vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat("encoder.json: token \"", token, "\": id ",
                                                     value.dump(), " is not an integer in [0, ",
                                                     vocab_size, ")"));
    }
    const auto id = static_cast<int32_t>(value.get<int64_t>());
    if (seen[id]) {
      return absl::InvalidArgumentError(
          absl::StrCat("encoder.json: token \"", token, "\": id ", id, " used twice"));
    }
    seen[id] = true;
    absl::StatusOr<std::string> bytes = TokenToBytes(token);
    if (!bytes.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("encoder.json: token \"", token, "\": ", bytes.status().message()));
    }
    t->id_of_bytes_[*bytes] = id;
    t->token_bytes_[id] = *std::move(bytes);
  }
  for (int b = 0; b < 256; ++b) {
    auto it = t->id_of_bytes_.find(std::string(1, static_cast<char>(b)));
    if (it == t->id_of_bytes_.end()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("encoder.json: no token for byte 0x%02X", b));
    }
    t->byte_ids_[b] = it->second;
  }

  // vocab.bpe: "#version: 0.2", then "first second" per line, by falling priority.
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(vocab_bpe, '\n')) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_number == 1 && absl::StartsWith(line, "#version"))) continue;
    const std::vector<absl::string_view> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocab.bpe line ", line_number, ": ", parts.size(), " tokens, expected 2"));
    }
    std::array<int32_t, 2> ids;
    std::string joined;
    for (int k = 0; k < 2; ++k) {
      absl::StatusOr<std::string> bytes = TokenToBytes(parts[k]);
      if (!bytes.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("vocab.bpe line ", line_number, ": \"",
                                                       parts[k], "\": ", bytes.status().message()));
      }
      auto it = t->id_of_bytes_.find(*bytes);
      if (it == t->id_of_bytes_.end()) {
        return absl::InvalidArgumentError(absl::StrCat("vocab.bpe line ", line_number, ": \"",
                                                       parts[k], "\" is not in encoder.json"));
      }
      ids[k] = it->second;
      joined += *bytes;
    }
    auto it = t->id_of_bytes_.find(joined);
    if (it == t->id_of_bytes_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "vocab.bpe line ", line_number, ": \"", parts[0], parts[1], "\" is not in encoder.json"));
    }
    // A repeated pair keeps its last rank, as dict(zip(merges, ranks)) does.
    t->merges_[PairKey(ids[0], ids[1])] = Merge{t->merge_count_, it->second};
    ++t->merge_count_;
  }
  return t;
}

std::vector<int32_t> BpeTokenizer::Encode(absl::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  for (absl::string_view piece : Gpt2PreTokenize(text)) EncodePiece(piece, &ids);
  return ids;
}

void BpeTokenizer::EncodePiece(absl::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.size() == 1) {
    ids->push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (piece.size() > kMaxCachedPieceBytes) {
    MergePiece(piece, ids);
    return;
  }
  {
    absl::MutexLock lock(&cache_mutex_);
    auto it = cache_.find(piece);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> piece_ids;
  MergePiece(piece, &piece_ids);
  ids->insert(ids->end(), piece_ids.begin(), piece_ids.end());
  absl::MutexLock lock(&cache_mutex_);
  if (cache_.size() >= kMaxCacheEntries) cache_.clear();
  cache_.emplace(piece, std::move(piece_ids));
}

const BpeTokenizer::Merge* BpeTokenizer::FindMerge(int32_t left, int32_t right) const {
  auto it = merges_.find(PairKey(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

// The reference (encoder.py's bpe()) repeats: find the pair of lowest rank; merge its
// occurrences left to right; until no pair has a rank. That is quadratic in the piece length.
// This does the same in O(n log n): symbols form a linked list, a heap holds every adjacent
// pair that has a rank (stale entries are skipped when popped), and each round pops all
// entries of the lowest rank, in position order, before merging any, so that pairs formed
// during a round wait for the next one as in the reference.
void BpeTokenizer::MergePiece(absl::string_view piece, std::vector<int32_t>* ids) const {
  const int n = static_cast<int>(piece.size());
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int prev, next;
  };
  std::vector<Symbol> symbols(n);
  for (int i = 0; i < n; ++i) {
    symbols[i] = {byte_ids_[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  struct Candidate {
    int32_t rank;
    int pos;  // the left symbol
    int32_t left, right;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  const auto push = [&](int pos) {
    if (pos < 0) return;
    const int next = symbols[pos].next;
    if (next < 0) return;
    if (const Merge* m = FindMerge(symbols[pos].id, symbols[next].id)) {
      heap.push({m->rank, pos, symbols[pos].id, symbols[next].id});
    }
  };
  for (int i = 0; i + 1 < n; ++i) push(i);

  std::vector<Candidate> round;
  while (!heap.empty()) {
    const int32_t rank = heap.top().rank;
    round.clear();
    while (!heap.empty() && heap.top().rank == rank) {
      round.push_back(heap.top());
      heap.pop();
    }
    for (const Candidate& c : round) {
      Symbol& left = symbols[c.pos];
      // Stale if either symbol changed since the entry was pushed. A symbol's id only grows
      // (merged tokens are longer), so equal ids mean the same pair is still there.
      if (left.id != c.left || left.next < 0 || symbols[left.next].id != c.right) continue;
      Symbol& right = symbols[left.next];
      left.id = FindMerge(c.left, c.right)->result;
      right.id = -1;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = c.pos;
      push(left.prev);
      push(c.pos);
    }
  }
  for (int i = 0; i >= 0; i = symbols[i].next) ids->push_back(symbols[i].id);
}

absl::StatusOr<std::string> BpeTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token ", i, ": id ", id, " outside the vocabulary [0, ", vocab_size(), ")"));
    }
    text += token_bytes_[id];
  }
  return text;
}

absl::StatusOr<int32_t> BpeTokenizer::EndOfTextId() const { return TokenId(kGpt2EndOfText); }

absl::StatusOr<int32_t> BpeTokenizer::TokenId(absl::string_view token) const {
  absl::StatusOr<std::string> bytes = TokenToBytes(token);
  if (bytes.ok()) {
    auto it = id_of_bytes_.find(*bytes);
    if (it != id_of_bytes_.end()) return it->second;
  }
  return absl::NotFoundError(absl::StrCat("no token \"", token, "\" in the vocabulary"));
}

}  // namespace fleettune::engine::text
