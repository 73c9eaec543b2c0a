#!/usr/bin/env node
// Generates engine/text/testdata/bpe_golden.json: GPT-2 BPE ids from npm's
// gpt-3-encoder 1.1.4 (the reference the C++ BpeTokenizer must match) for
// strings that exercise every branch of GPT-2's pre-tokenization pattern.
//
// Regenerate with (from the repository root, after tools/setup.sh):
//
//   node engine/text/testdata/gen_bpe_golden.js > engine/text/testdata/bpe_golden.json
//
// The output is committed; bpe_tokenizer_test reads it and needs no Node.js.
// Each case is {"text", "ids"}; the script checks that the package's own
// decode() turns the ids back into the text.
'use strict';

const path = require('path');
const fs = require('fs');

const pkgDir = path.join(__dirname, '../../../third_party/data/npm/node_modules/gpt-3-encoder');
const {encode, decode} = require(pkgDir);
const version = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'))).version;
if (version !== '1.1.4') throw new Error(`expected gpt-3-encoder 1.1.4, found ${version}`);

const texts = [
  '',
  'Hello, world!',
  'The quick brown fox jumps over the lazy dog.',
  ' ',
  '   leading spaces',
  'trailing spaces   ',
  'multiple   spaces   between  words',
  'line one\nline two\n\nline four\n',
  'tabs\tand\ttabs\t\tend',
  '\n\n\n',
  '  \n  mixed \t whitespace \r\n end  ',
  "I'm sure you're right, we've seen they'll say she'd say it's done, don't you think?",
  "SHOUTING'S 'QUOTED' 'S 'T",
  "x'''s ''ll 'd'd 'sup",
  'Numbers: 0 1 12 123 1234 12345 3.14159 -42 1,000,000 2^10=1024',
  '2023-11-28T04:52:00Z and 0x7fff_ffff',
  'Punctuation!!! ??? ... ;;; --- ((())) [brackets] {braces} <angle> @#$%^&*',
  ',,,,,, ,",", \',\' ,,\' ,.,.,',
  'email@example.com https://example.org/path?q=1&r=2#frag',
  'def f(x):\n    return x ** 2  # comment\n',
  'Café, naïve, façade, résumé, Ångström, São Paulo, Zürich, Œuvre, smørrebrød',
  'Latin-1: ¡¿ «» £¥ § © ® ° ± ² ³ ¹ ¼ ½ ¾ × ÷ µ ¶ · ª º',
  'e\u0301 (e + combining acute) vs \u00e9',
  'Ελληνικά και Русский текст',
  '中文文本测试，还有日本語のテキスト。',
  '한국어 텍스트',
  'Emoji: 😀 👍🏽 🇫🇷 👨‍👩‍👧 ❤️',
  'Arabic-Indic ٠١٢٣ and Devanagari १२३ and Roman Ⅻ and ①②',
  'non-breaking\u00a0space, ideographic\u3000space, em\u2003space\u00a0\u00a0end',
  '<|endoftext|> is literal text here',
  'Mixed123abc 456DEF ghi789 a1b2c3',
  '"Quoted" text with \'single\' quotes and back`ticks`',
  'A day for firm decisions!!!!!  Or is it?\n\t\t-- Anonymous',
  'Supercalifragilisticexpialidocious antidisestablishmentarianism',
  'ﬁ ligature and ｆｕｌｌｗｉｄｔｈ １２３',
  'a'.repeat(40) + ' ' + 'ab'.repeat(20) + ' ' + '!'.repeat(30),
];

const cases = texts.map((text) => {
  const ids = encode(text);
  const back = decode(ids);
  if (back !== text) throw new Error(`decode(encode(${JSON.stringify(text)})) gave ${back}`);
  return {text, ids};
});

const out = {
  generator: 'engine/text/testdata/gen_bpe_golden.js',
  reference: `npm gpt-3-encoder@${version} on Node.js ${process.version} ` +
      `(Unicode ${process.versions.unicode})`,
  cases,
};
// One case per line keeps diffs readable.
const lines = ['{'];
lines.push(`  "generator": ${JSON.stringify(out.generator)},`);
lines.push(`  "reference": ${JSON.stringify(out.reference)},`);
lines.push('  "cases": [');
cases.forEach((c, i) => lines.push('    ' + JSON.stringify(c) + (i + 1 < cases.length ? ',' : '')));
lines.push('  ]');
lines.push('}');
process.stdout.write(lines.join('\n') + '\n');
