#include "engine/text/unicode_classes.h"

#include <cstddef>
#include <ios>

#include "gtest/gtest.h"

namespace fleettune::engine::text {
namespace {

TEST(UnicodeClasses, ClassifiesAsciiAndLatin1) {
  for (char32_t c = 0; c < 0x80; ++c) {
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    const bool digit = c >= '0' && c <= '9';
    const bool space = c == ' ' || (c >= '\t' && c <= '\r');
    EXPECT_EQ(IsLetter(c), letter) << static_cast<int>(c);
    EXPECT_EQ(IsNumber(c), digit) << static_cast<int>(c);
    EXPECT_EQ(IsWhitespace(c), space) << static_cast<int>(c);
  }
  // Latin-1's letters are ª µ º and À..ÿ except × and ÷; its numbers ² ³ ¹ ¼ ½ ¾.
  for (char32_t c = 0x80; c < 0x100; ++c) {
    const bool letter =
        c == 0xAA || c == 0xB5 || c == 0xBA || (c >= 0xC0 && c != 0xD7 && c != 0xF7);
    const bool number = c == 0xB2 || c == 0xB3 || c == 0xB9 || (c >= 0xBC && c <= 0xBE);
    EXPECT_EQ(IsLetter(c), letter) << std::hex << static_cast<int>(c);
    EXPECT_EQ(IsNumber(c), number) << std::hex << static_cast<int>(c);
    EXPECT_EQ(IsWhitespace(c), c == 0xA0) << std::hex << static_cast<int>(c);
  }
}

TEST(UnicodeClasses, ClassifiesOtherScripts) {
  EXPECT_TRUE(IsLetter(U'Ω'));
  EXPECT_TRUE(IsLetter(U'ж'));
  EXPECT_TRUE(IsLetter(U'中'));
  EXPECT_TRUE(IsLetter(U'한'));
  EXPECT_TRUE(IsLetter(U'ｆ'));          // fullwidth
  EXPECT_TRUE(IsLetter(U'\U00020000'));  // CJK extension B
  EXPECT_FALSE(IsLetter(U'\u0301'));     // a combining mark (Mn)
  EXPECT_FALSE(IsLetter(U'😀'));
  EXPECT_TRUE(IsNumber(U'٣'));  // Arabic-Indic digit (Nd)
  EXPECT_TRUE(IsNumber(U'Ⅻ'));  // Roman numeral (Nl)
  EXPECT_TRUE(IsNumber(U'①'));  // circled digit (No)
  EXPECT_FALSE(IsNumber(U'中'));
  EXPECT_TRUE(IsWhitespace(U'\u3000'));
  EXPECT_TRUE(IsWhitespace(U'\u2028'));
  EXPECT_TRUE(IsWhitespace(U'\uFEFF'));
  EXPECT_FALSE(IsWhitespace(U'\u0085'));  // NEL is not in JavaScript's \s
  EXPECT_FALSE(IsWhitespace(U'\u200B'));  // nor is the zero-width space
  EXPECT_FALSE(IsLetter(0x110000));
}

TEST(UnicodeClasses, TablesAreSortedAndDisjoint) {
  struct Table {
    const internal::CodePointRange* ranges;
    size_t count;
  };
  for (const Table& t : {Table{internal::kLetterRanges, internal::kLetterRangeCount},
                         Table{internal::kNumberRanges, internal::kNumberRangeCount},
                         Table{internal::kWhitespaceRanges, internal::kWhitespaceRangeCount}}) {
    ASSERT_GT(t.count, 0u);
    for (size_t i = 0; i < t.count; ++i) {
      EXPECT_LE(t.ranges[i].first, t.ranges[i].last);
      if (i > 0) {
        EXPECT_LT(t.ranges[i - 1].last + 1, t.ranges[i].first);
      }
    }
  }
}

}  // namespace
}  // namespace fleettune::engine::text
