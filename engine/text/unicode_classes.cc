#include "engine/text/unicode_classes.h"

#include <algorithm>
#include <cstddef>

namespace fleettune::engine::text {
namespace {

using internal::CodePointRange;

bool InRanges(const CodePointRange* ranges, size_t count, char32_t cp) {
  // The first range whose last code point is >= cp.
  const CodePointRange* end = ranges + count;
  const CodePointRange* it = std::lower_bound(
      ranges, end, cp, [](const CodePointRange& r, char32_t c) { return r.last < c; });
  return it != end && it->first <= cp;
}

}  // namespace

bool IsLetter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return InRanges(internal::kLetterRanges, internal::kLetterRangeCount, cp);
}

bool IsNumber(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return InRanges(internal::kNumberRanges, internal::kNumberRangeCount, cp);
}

bool IsWhitespace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= '\t' && cp <= '\r');
  return InRanges(internal::kWhitespaceRanges, internal::kWhitespaceRangeCount, cp);
}

}  // namespace fleettune::engine::text
