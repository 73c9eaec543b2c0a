#include "engine/io/safetensors.h"

#include <dirent.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
// status_matchers.h uses FT_STATUS_CONCAT_ from status_macros.h without including it.
#include "engine/base/status_macros.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::io {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

using TensorMap = std::map<std::string, Tensor>;

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kDataLoss = absl::StatusCode::kDataLoss;

// A file with `header` as its JSON header and `data` as its data section.
std::string FileBytes(const std::string& header, const std::string& data) {
  const uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

template <typename T>
std::string RawBytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

std::vector<float> F32Values(const Tensor& t) {
  return std::vector<float>(t.f32(), t.f32() + t.num_elements());
}
std::vector<int32_t> I32Values(const Tensor& t) {
  return std::vector<int32_t>(t.i32(), t.i32() + t.num_elements());
}

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

TensorMap SampleTensors() {
  TensorMap tensors;
  tensors.emplace("dense/w",
                  Tensor::FromF32({2, 3}, {1.5f, -2.0f, 0.0f, 3.25f, -0.0f, 1e-30f}).value());
  tensors.emplace("labels", Tensor::FromI32({4}, {0, -1, 2147483647, -2147483647 - 1}).value());
  tensors.emplace("scalar", Tensor::FromF32({}, {42.0f}).value());
  tensors.emplace("empty", Tensor::Zeros(DType::kI32, {0, 5}));
  return tensors;
}

void ExpectSameTensors(const TensorMap& got, const TensorMap& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, tensor] : want) {
    SCOPED_TRACE(name);
    ASSERT_EQ(got.count(name), 1u);
    const Tensor& g = got.at(name);
    EXPECT_EQ(g.type(), tensor.type());
    EXPECT_EQ(std::memcmp(g.raw(), tensor.raw(), tensor.bytes()), 0);
  }
}

TEST(Safetensors, SerializeParseRoundTripsF32AndI32) {
  const TensorMap tensors = SampleTensors();
  ASSERT_OK_AND_ASSIGN(std::string bytes, SerializeSafetensors(tensors));
  ASSERT_OK_AND_ASSIGN(TensorMap parsed, ParseSafetensors(bytes));
  ExpectSameTensors(parsed, tensors);
  EXPECT_THAT(F32Values(parsed.at("dense/w")),
              ElementsAre(1.5f, -2.0f, 0.0f, 3.25f, -0.0f, 1e-30f));
  EXPECT_THAT(parsed.at("scalar").shape(), ElementsAre());
  EXPECT_THAT(parsed.at("empty").shape(), ElementsAre(0, 5));
}

TEST(Safetensors, SerializesReferenceLayout) {
  ASSERT_OK_AND_ASSIGN(std::string bytes, SerializeSafetensors(SampleTensors()));
  uint64_t header_size;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ((8 + header_size) % 8, 0u) << "data section must start 8-byte aligned";
  const auto header = nlohmann::json::parse(bytes.substr(8, header_size));
  EXPECT_EQ(header["dense/w"]["dtype"], "F32");
  EXPECT_EQ(header["dense/w"]["shape"], nlohmann::json::array({2, 3}));
  EXPECT_EQ(header["dense/w"]["data_offsets"], nlohmann::json::array({0, 24}));
  EXPECT_EQ(header["labels"]["dtype"], "I32");
  EXPECT_FALSE(header.contains("__metadata__"));
  EXPECT_EQ(bytes.size(), 8 + header_size + 24 + 0 + 16 + 4);
}

TEST(Safetensors, RoundTripsEmptyMap) {
  ASSERT_OK_AND_ASSIGN(std::string bytes, SerializeSafetensors({}));
  ASSERT_OK_AND_ASSIGN(TensorMap parsed, ParseSafetensors(bytes));
  EXPECT_TRUE(parsed.empty());
}

// Names of the entries of `dir` that start with `prefix`.
std::vector<std::string> ListDir(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    if (std::string(e->d_name).rfind(prefix, 0) == 0) names.push_back(e->d_name);
  }
  closedir(d);
  return names;
}

TEST(Safetensors, WriteReadRoundTripsAndReplacesAtomically) {
  const std::string dir = TempPath("write_dir");
  mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/model.safetensors";
  {
    std::ofstream old(path);
    old << "old contents";
  }
  const TensorMap tensors = SampleTensors();
  ASSERT_OK(WriteSafetensors(path, tensors));
  ASSERT_OK_AND_ASSIGN(TensorMap read, ReadSafetensors(path));
  ExpectSameTensors(read, tensors);
  // Only the final file remains: the temporary was renamed over it.
  EXPECT_THAT(ListDir(dir, "model"), ElementsAre("model.safetensors"));
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST(Safetensors, WriteIntoMissingDirectoryFailsWithoutLeftovers) {
  EXPECT_THAT(WriteSafetensors(TempPath("no/such/dir/m.safetensors"), SampleTensors()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("m.safetensors")));
}

TEST(Safetensors, WriteRejectsReservedAndNonUtf8NamesAndEmptyTensors) {
  TensorMap reserved;
  reserved.emplace("__metadata__", Tensor::Zeros(DType::kF32, {1}));
  EXPECT_THAT(SerializeSafetensors(reserved), StatusIs(kInvalid, HasSubstr("__metadata__")));

  TensorMap bad_name;
  bad_name.emplace("w\xff", Tensor::Zeros(DType::kF32, {1}));
  EXPECT_THAT(SerializeSafetensors(bad_name),
              StatusIs(kInvalid, AllOf(HasSubstr("tensor 'w\\xff'"), HasSubstr("UTF-8"))));

  TensorMap no_storage;
  no_storage.emplace("w", Tensor());
  EXPECT_THAT(SerializeSafetensors(no_storage),
              StatusIs(kInvalid, AllOf(HasSubstr("tensor 'w'"), HasSubstr("no storage"))));
  const std::string path = TempPath("never_written.safetensors");
  EXPECT_THAT(WriteSafetensors(path, no_storage), StatusIs(kInvalid, HasSubstr("no storage")));
  EXPECT_THAT(ReadSafetensors(path), StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
}

TEST(Safetensors, ReadsReferenceFileWithMetadataAndPadding) {
  // As written by the Python library: metadata first, header padded with spaces.
  std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  ASSERT_OK_AND_ASSIGN(
      TensorMap parsed,
      ParseSafetensors(FileBytes(header, RawBytes<float>({0.5f, -1.0f}) + RawBytes<int32_t>({7}))));
  EXPECT_THAT(F32Values(parsed.at("a")), ElementsAre(0.5f, -1.0f));
  EXPECT_THAT(I32Values(parsed.at("b")), ElementsAre(7));
}

TEST(Safetensors, ReadsI64IntoI32AndF64IntoF32) {
  const std::string header = R"({"ids":{"dtype":"I64","shape":[3],"data_offsets":[0,24]},)"
                             R"("x":{"dtype":"F64","shape":[2,2],"data_offsets":[24,56]}})";
  const std::string data = RawBytes<int64_t>({-2147483648LL, 5, 2147483647LL}) +
                           RawBytes<double>({0.1, -3.5, 1e-50, 3.0e38});
  const std::string path = TempPath("wide.safetensors");
  {
    std::ofstream out(path, std::ios::binary);
    out << FileBytes(header, data);
  }
  ASSERT_OK_AND_ASSIGN(TensorMap parsed, ReadSafetensors(path));
  EXPECT_EQ(parsed.at("ids").dtype(), DType::kI32);
  EXPECT_THAT(I32Values(parsed.at("ids")), ElementsAre(-2147483647 - 1, 5, 2147483647));
  EXPECT_EQ(parsed.at("x").dtype(), DType::kF32);
  EXPECT_THAT(parsed.at("x").shape(), ElementsAre(2, 2));
  EXPECT_THAT(F32Values(parsed.at("x")), ElementsAre(0.1f, -3.5f, 0.0f, 3.0e38f));
}

TEST(Safetensors, ReadsF64InfinityAndNan) {
  const std::string header = R"({"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})";
  ASSERT_OK_AND_ASSIGN(TensorMap parsed,
                       ParseSafetensors(FileBytes(
                           header, RawBytes<double>({-std::numeric_limits<double>::infinity(),
                                                     std::numeric_limits<double>::quiet_NaN()}))));
  EXPECT_EQ(parsed.at("x").f32()[0], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(parsed.at("x").f32()[1]));
}

TEST(Safetensors, RejectsI64OutOfI32Range) {
  const std::string header = R"({"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})";
  EXPECT_THAT(ParseSafetensors(FileBytes(header, RawBytes<int64_t>({1, 5000000000LL}))),
              StatusIs(kInvalid, AllOf(HasSubstr("tensor 'ids'"), HasSubstr("5000000000"),
                                       HasSubstr("index 1"), HasSubstr("does not fit in i32"))));
  EXPECT_THAT(ParseSafetensors(FileBytes(header, RawBytes<int64_t>({-2147483649LL, 0}))),
              StatusIs(kInvalid, HasSubstr("-2147483649")));
}

TEST(Safetensors, RejectsF64OutOfF32Range) {
  const std::string header = R"({"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})";
  EXPECT_THAT(ParseSafetensors(FileBytes(header, RawBytes<double>({-1e300}))),
              StatusIs(kInvalid, AllOf(HasSubstr("tensor 'x'"), HasSubstr("does not fit in f32"))));
}

TEST(Safetensors, RejectsUnsupportedDtypeNamingTensorAndDtype) {
  for (const char* dtype : {"BF16", "F16", "U8", "BOOL", "f32", ""}) {
    const std::string header =
        absl::StrCat(R"({"w":{"dtype":")", dtype, R"(","shape":[2],"data_offsets":[0,4]}})");
    EXPECT_THAT(ParseSafetensors(FileBytes(header, "abcd")),
                StatusIs(kInvalid, AllOf(HasSubstr("tensor 'w'"),
                                         HasSubstr(absl::StrCat("unsupported dtype ", dtype)))));
  }
}

TEST(Safetensors, RejectsBadHeaderLength) {
  EXPECT_THAT(ParseSafetensors(""), StatusIs(kDataLoss, HasSubstr("fewer than the 8-byte")));
  EXPECT_THAT(ParseSafetensors(std::string("\x02\0\0\0", 4)),
              StatusIs(kDataLoss, HasSubstr("has 4 bytes")));
  std::string huge = FileBytes("{}", "");
  huge[5] = 0x10;  // header length 2^44 + 2
  EXPECT_THAT(ParseSafetensors(huge), StatusIs(kInvalid, HasSubstr("exceeds the limit")));
  std::string past_end = FileBytes("{}", "");
  past_end[0] = 3;
  EXPECT_THAT(ParseSafetensors(past_end),
              StatusIs(kDataLoss, HasSubstr("header length 3 exceeds the 2 bytes")));
}

TEST(Safetensors, RejectsMalformedJson) {
  EXPECT_THAT(ParseSafetensors(FileBytes(R"({"w": {"dtype": )", "")),
              StatusIs(kInvalid, HasSubstr("not valid JSON")));
  EXPECT_THAT(ParseSafetensors(FileBytes("", "")), StatusIs(kInvalid, HasSubstr("not valid JSON")));
  EXPECT_THAT(ParseSafetensors(FileBytes("{\"w\xff\": 1}", "")),
              StatusIs(kInvalid, HasSubstr("not valid JSON")));
  EXPECT_THAT(ParseSafetensors(FileBytes(R"({"a": 1e999})", "")),
              StatusIs(kInvalid, HasSubstr("not valid JSON")));
  EXPECT_THAT(ParseSafetensors(FileBytes("[1, 2]", "")),
              StatusIs(kInvalid, HasSubstr("header is a JSON array, not an object")));
  // Deep nesting must neither overflow the stack nor be accepted.
  EXPECT_THAT(ParseSafetensors(FileBytes(std::string(200000, '['), "")),
              StatusIs(kInvalid, HasSubstr("not valid JSON")));
  EXPECT_THAT(
      ParseSafetensors(FileBytes(
          absl::StrCat(R"({"w":)", std::string(200000, '['), std::string(200000, ']'), "}"), "")),
      StatusIs(kInvalid, HasSubstr("tensor 'w': entry is a JSON array")));
  // Error messages must not serialize (recursively) a deeply nested value either.
  const std::string deep = absl::StrCat(std::string(200000, '['), std::string(200000, ']'));
  EXPECT_THAT(ParseSafetensors(FileBytes(absl::StrCat(R"({"w":{"dtype":"F32","shape":[)", deep,
                                                      R"(],"data_offsets":[0,4]}})"),
                                         "abcd")),
              StatusIs(kInvalid, HasSubstr("tensor 'w': shape[0] is a JSON array")));
  EXPECT_THAT(ParseSafetensors(FileBytes(
                  absl::StrCat(R"({"w":{"dtype":)", deep, R"(,"shape":[1],"data_offsets":[0,4]}})"),
                  "abcd")),
              StatusIs(kInvalid, HasSubstr("tensor 'w': dtype is a JSON array")));
  EXPECT_THAT(
      ParseSafetensors(FileBytes(
          absl::StrCat(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":)", deep, "}}"), "abcd")),
      StatusIs(kInvalid, HasSubstr("tensor 'w': data_offsets is a JSON array")));
}

TEST(Safetensors, RejectsDuplicateNames) {
  const std::string entry = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  EXPECT_THAT(
      ParseSafetensors(FileBytes(absl::StrCat(R"({"w":)", entry, R"(,"w":)", entry, "}"), "abcd")),
      StatusIs(kInvalid, AllOf(HasSubstr("tensor 'w'"), HasSubstr("more than once"))));
}

TEST(Safetensors, RejectsBadMetadata) {
  EXPECT_THAT(ParseSafetensors(FileBytes(R"({"__metadata__":{"format":1}})", "")),
              StatusIs(kInvalid, HasSubstr("__metadata__ value for 'format' is a number")));
  EXPECT_THAT(ParseSafetensors(FileBytes(R"({"__metadata__":[]})", "")),
              StatusIs(kInvalid, HasSubstr("__metadata__ is a JSON array")));
}

// One tensor 'w' whose entry is `entry`, with a 16-byte data section.
absl::StatusOr<TensorMap> ParseEntry(const std::string& entry) {
  return ParseSafetensors(FileBytes(absl::StrCat(R"({"w":)", entry, "}"), std::string(16, 'x')));
}

TEST(Safetensors, RejectsMalformedEntriesNamingTensor) {
  struct Case {
    std::string entry;
    std::string message;
  };
  const std::vector<Case> cases = {
      {R"("F32")", "entry is a JSON string, not an object"},
      {R"({"shape":[4],"data_offsets":[0,16]})", "missing \"dtype\""},
      {R"({"dtype":32,"shape":[4],"data_offsets":[0,16]})", "dtype is 32, not a string"},
      {R"({"dtype":"F32","data_offsets":[0,16]})", "missing \"shape\""},
      {R"({"dtype":"F32","shape":4,"data_offsets":[0,16]})", "shape is a JSON number"},
      {R"({"dtype":"F32","shape":[-4],"data_offsets":[0,16]})", "shape[0] is -4"},
      {R"({"dtype":"F32","shape":[2,2.0],"data_offsets":[0,16]})", "shape[1] is 2.0"},
      {R"({"dtype":"F32","shape":[2,"2"],"data_offsets":[0,16]})", "shape[1] is \"2\""},
      {R"({"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,16]})",
       "not an integer in [0, 2^63)"},
      {R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]})",
       "more than 17179869184 elements"},
      {R"({"dtype":"F32","shape":[4]})", "missing \"data_offsets\""},
      {R"({"dtype":"F32","shape":[4],"data_offsets":[0]})", "not an array [begin, end]"},
      {R"({"dtype":"F32","shape":[4],"data_offsets":{"a":1}})", "not an array [begin, end]"},
      {R"({"dtype":"F32","shape":[4],"data_offsets":[0,-16]})", "data_offsets[1] is -16"},
      {R"({"dtype":"F32","shape":[0],"data_offsets":[16,0]})", "end before they begin"},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[0,16]})", "hold 16 bytes but F32[2] needs 8"},
      {R"({"dtype":"I64","shape":[1],"data_offsets":[0,16]})", "hold 16 bytes but I64[1] needs 8"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(ParseEntry(c.entry),
                StatusIs(kInvalid, AllOf(HasSubstr("tensor 'w': "), HasSubstr(c.message))))
        << c.entry;
  }
}

TEST(Safetensors, RejectsOffsetsPastDataSectionAsDataLoss) {
  EXPECT_THAT(ParseEntry(R"({"dtype":"F32","shape":[5],"data_offsets":[0,20]})"),
              StatusIs(kDataLoss, AllOf(HasSubstr("tensor 'w'"), HasSubstr("[0, 20)"),
                                        HasSubstr("16-byte data section"))));
  EXPECT_THAT(ParseEntry(R"({"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,0]})"),
              StatusIs(kInvalid, HasSubstr("data_offsets[0]")));
}

TEST(Safetensors, RejectsOverlappingRangesNamingBoth) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  EXPECT_THAT(ParseSafetensors(FileBytes(header, std::string(12, 'x'))),
              StatusIs(kInvalid, AllOf(HasSubstr("tensor 'b': bytes [4, 12) overlap"),
                                       HasSubstr("tensor 'a' at [0, 8)"))));
  const std::string same = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_THAT(ParseSafetensors(FileBytes(same, std::string(8, 'x'))),
              StatusIs(kInvalid, HasSubstr("overlap")));
}

TEST(Safetensors, RejectsBytesThatBelongToNoTensor) {
  const std::string gap = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  EXPECT_THAT(ParseSafetensors(FileBytes(gap, std::string(12, 'x'))),
              StatusIs(kInvalid, AllOf(HasSubstr("[4, 8) before tensor 'b'"),
                                       HasSubstr("belong to no tensor"))));
  const std::string trailing = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  EXPECT_THAT(ParseSafetensors(FileBytes(trailing, std::string(6, 'x'))),
              StatusIs(kInvalid, HasSubstr("[4, 6) after tensor 'a' belong to no tensor")));
  EXPECT_THAT(ParseSafetensors(FileBytes("{}", "xy")),
              StatusIs(kInvalid, HasSubstr("lists no tensors")));
}

TEST(Safetensors, ReadPrefixesErrorsWithPath) {
  const std::string path = TempPath("corrupt.safetensors");
  {
    std::ofstream out(path, std::ios::binary);
    out << FileBytes(R"({"w":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}})", "xx");
  }
  EXPECT_THAT(ReadSafetensors(path),
              StatusIs(kInvalid, AllOf(HasSubstr(path + ": tensor 'w'"), HasSubstr("BF16"))));
  EXPECT_THAT(ReadSafetensors(::testing::TempDir()), StatusIs(kInvalid, HasSubstr("directory")));
}

// Deterministic mutations of a valid file (bit flips, byte overwrites, truncations, header
// length edits, insertions): each parse must return OK or a clean error, never crash.
TEST(Safetensors, SurvivesMutatedFiles) {
  TensorMap tensors = SampleTensors();
  ASSERT_OK_AND_ASSIGN(std::string valid, SerializeSafetensors(tensors));
  // Also cover the I64/F64 paths and metadata.
  const std::string wide = FileBytes(
      R"({"__metadata__":{"k":"v"},"i":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},)"
      R"("f":{"dtype":"F64","shape":[1,1],"data_offsets":[16,24]}})",
      RawBytes<int64_t>({3, -4}) + RawBytes<double>({2.5}));
  ASSERT_OK(ParseSafetensors(wide).status());

  std::mt19937 rng(12345);
  int ok = 0, failed = 0;
  for (int i = 0; i < 4000; ++i) {
    std::string bytes = (i % 2 == 0) ? valid : wide;
    const int mutations = 1 + static_cast<int>(rng() % 3);
    for (int m = 0; m < mutations && !bytes.empty(); ++m) {
      switch (rng() % 6) {
        case 0:
          bytes[rng() % bytes.size()] ^= static_cast<char>(1u << (rng() % 8));
          break;
        case 1:
          bytes[rng() % bytes.size()] = static_cast<char>(rng());
          break;
        case 2:
          bytes.resize(rng() % bytes.size());
          break;
        case 3:
          bytes[rng() % 8] = static_cast<char>(rng());  // header length
          break;
        case 4:
          bytes.insert(bytes.begin() + rng() % bytes.size(), static_cast<char>(rng()));
          break;
        case 5: {
          // Digits inside the header change shapes and offsets while keeping JSON valid.
          const size_t pos = 8 + rng() % (bytes.size() > 8 ? bytes.size() - 8 : 1);
          if (pos < bytes.size()) bytes[pos] = static_cast<char>('0' + rng() % 10);
          break;
        }
      }
    }
    const absl::StatusOr<TensorMap> parsed = ParseSafetensors(bytes);
    if (parsed.ok()) {
      ++ok;
      continue;
    }
    ++failed;
    EXPECT_THAT(parsed.status().code(), AnyOf(kInvalid, kDataLoss)) << parsed.status();
  }
  EXPECT_GT(failed, 0);
  EXPECT_GT(ok, 0);
}

}  // namespace
}  // namespace fleettune::engine::io
