#include "server/compiler/device_classes.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::server {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kGiB = int64_t{1} << 30;

MATCHER_P(IsOkAndHolds, value, "is OK and holds " + ::testing::PrintToString(value)) {
  if (!arg.ok()) {
    *result_listener << "whose status is " << arg.status();
    return false;
  }
  *result_listener << "whose value is " << ::testing::PrintToString(*arg);
  return *arg == value;
}

std::vector<std::string> Names(const DeviceClassRegistry& registry) {
  std::vector<std::string> names;
  for (const v1::DeviceClass& c : registry.classes()) names.push_back(c.name());
  return names;
}

v1::DeviceProfile Profile(const std::string& arch, std::vector<std::string> features,
                          int64_t memory_bytes, const std::string& accelerator = "") {
  v1::DeviceProfile p;
  p.set_arch(arch);
  for (const std::string& f : features) p.add_isa_features(f);
  p.set_cores(4);
  p.set_memory_bytes(memory_bytes);
  p.set_accelerator(accelerator);
  return p;
}

// /proc/cpuinfo "Features" of the boards, as an agent reports them.
const std::vector<std::string> kPi4Features = {"fp", "asimd", "evtstrm", "crc32", "cpuid"};
const std::vector<std::string> kPi5Features = {
    "fp",      "asimd", "evtstrm", "aes",   "pmull",    "sha1",  "sha2",  "crc32",
    "atomics", "fphp",  "asimdhp", "cpuid", "asimdrdm", "lrcpc", "dcpop", "asimddp"};
// Some /proc/cpuinfo "flags" of an x86-64 server with AVX-512 (Sapphire Rapids).
const std::vector<std::string> kAvx512Features = {
    "sse4_2",  "avx",      "avx2",     "fma",         "bmi2",        "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_fp16", "amx_tile"};

TEST(DeviceClassRegistry, DefaultsAreValidAndNamed) {
  const DeviceClassRegistry defaults = DeviceClassRegistry::Defaults();
  EXPECT_THAT(Names(defaults),
              ElementsAre("rpi4", "rpi5", "jetson-orin-nano", "x86-avx2", "x86-avx512"));
  EXPECT_OK(DeviceClassRegistry::FromConfig(defaults.ToConfig()).status());
  for (const v1::DeviceClass& c : defaults.classes()) {
    EXPECT_OK(ValidateDeviceClass(c));
    EXPECT_FALSE(c.description().empty()) << c.name();
  }
}

struct ClassifyCase {
  const char* what;
  v1::DeviceProfile profile;
  const char* want;
};

TEST(DeviceClassRegistry, ClassifiesTheDefaultBoards) {
  const DeviceClassRegistry registry = DeviceClassRegistry::Defaults();
  const std::vector<ClassifyCase> cases = {
      {"Pi 4, 4 GB (3.7 GiB reported)", Profile("aarch64", kPi4Features, 3'980'000'000), "rpi4"},
      {"Pi 4, 8 GB", Profile("aarch64", kPi4Features, 8 * kGiB - 200'000'000), "rpi4"},
      {"Pi 4 probed as neon", Profile("aarch64", {"neon"}, 4 * kGiB), "rpi4"},
      {"Pi 5 also matches rpi4; priority picks rpi5", Profile("aarch64", kPi5Features, 8 * kGiB),
       "rpi5"},
      {"Orin Nano matches rpi4 and rpi5 too",
       Profile("aarch64", kPi5Features, 7 * kGiB, "cuda:orin"), "jetson-orin-nano"},
      {"Orin Nano 4 GB", Profile("aarch64", {"asimd"}, 3'600'000'000, "cuda"), "jetson-orin-nano"},
      {"x86 with AVX2", Profile("x86_64", {"sse4_2", "avx", "avx2", "fma", "bmi2"}, 16 * kGiB),
       "x86-avx2"},
      {"x86, upper case", Profile("X86_64", {"AVX2", "FMA"}, 16 * kGiB), "x86-avx2"},
      {"x86 with a GPU still x86-avx2", Profile("x86_64", {"avx2", "fma"}, 16 * kGiB, "cuda:4090"),
       "x86-avx2"},
      {"x86 with AVX-512 also matches x86-avx2; priority picks x86-avx512",
       Profile("x86_64", kAvx512Features, 64 * kGiB), "x86-avx512"},
      {"AVX-512, upper case", Profile("X86_64", {"AVX512F", "AVX2", "FMA"}, 16 * kGiB),
       "x86-avx512"},
      {"AVX-512 with a GPU", Profile("x86_64", kAvx512Features, 16 * kGiB, "cuda:h100"),
       "x86-avx512"},
  };
  for (const ClassifyCase& c : cases) {
    EXPECT_THAT(registry.Classify(c.profile), IsOkAndHolds(std::string(c.want))) << c.what;
  }
}

TEST(KernelIsaFor, FollowsTheRequiredIsa) {
  const DeviceClassRegistry registry = DeviceClassRegistry::Defaults();
  const std::vector<std::pair<std::string, std::string>> want = {
      {"rpi4", "generic"},  {"rpi5", "generic"},      {"jetson-orin-nano", "generic"},
      {"x86-avx2", "avx2"}, {"x86-avx512", "avx512"},
  };
  for (const auto& [name, isa] : want) {
    ASSERT_OK_AND_ASSIGN(const v1::DeviceClass* c, registry.Find(name));
    EXPECT_EQ(KernelIsaFor(*c), isa) << name;
  }
}

TEST(DeviceClassRegistry, OverrideWinsAndMustExist) {
  const DeviceClassRegistry registry = DeviceClassRegistry::Defaults();
  v1::DeviceProfile p = Profile("x86_64", {"avx2", "fma"}, 16 * kGiB);
  p.set_class_override("rpi4");
  EXPECT_THAT(registry.Classify(p), IsOkAndHolds(std::string("rpi4")));

  p.set_class_override("rpi9");
  EXPECT_THAT(
      registry.Classify(p),
      StatusIs(absl::StatusCode::kNotFound,
               AllOf(HasSubstr("class_override 'rpi9' names no device class"),
                     HasSubstr("known: jetson-orin-nano, rpi4, rpi5, x86-avx2, x86-avx512)"))));

  p.set_class_override("Raspberry Pi");
  EXPECT_THAT(registry.Classify(p),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a device class name")));
}

TEST(DeviceClassRegistry, NoMatchSaysWhy) {
  const DeviceClassRegistry registry = DeviceClassRegistry::Defaults();
  EXPECT_THAT(registry.Classify(Profile("aarch64", kPi4Features, 2 * kGiB)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("no device class for aarch64 with 2 GiB; closest: rpi4 needs "
                                 "3.5 GiB of memory")));
  EXPECT_THAT(registry.Classify(Profile("x86_64", {"sse4_2", "avx"}, 8 * kGiB)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("no device class for x86_64 with 8 GiB; closest: x86-avx2 needs "
                                 "ISA avx2, fma")));
  // Both x86 classes lack only fma here; the higher priority is named.
  EXPECT_THAT(registry.Classify(Profile("x86_64", {"avx512f", "avx2"}, 8 * kGiB)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("closest: x86-avx512 needs ISA fma")));
  EXPECT_THAT(registry.Classify(Profile("aarch64", {}, 1 * kGiB)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("closest: rpi4 needs ISA asimd and 3.5 GiB of memory")));
  EXPECT_THAT(registry.Classify(Profile("riscv64", {"rv64gc"}, 4 * kGiB)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("no class is for arch 'riscv64' (classes exist for aarch64, "
                                 "x86_64)")));
}

TEST(DeviceClassRegistry, RejectsMalformedProfiles) {
  const DeviceClassRegistry registry = DeviceClassRegistry::Defaults();
  EXPECT_THAT(registry.Classify(Profile("", {"avx2"}, kGiB)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no arch")));
  EXPECT_THAT(registry.Classify(Profile("x86_64", {"avx2"}, -1)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("negative memory_bytes")));
}

TEST(DeviceClassRegistry, HighestPriorityWinsTiesByName) {
  ASSERT_OK_AND_ASSIGN(DeviceClassRegistry registry, DeviceClassRegistry::FromTextProto(R"pb(
                         classes {
                           name: "zeta"
                           arch: "x86_64"
                           training_memory_budget_bytes: 1
                           threads: 1
                           priority: 5
                         }
                         classes {
                           name: "beta"
                           arch: "x86_64"
                           training_memory_budget_bytes: 1
                           threads: 1
                           priority: 5
                         }
                         classes {
                           name: "alpha"
                           arch: "x86_64"
                           training_memory_budget_bytes: 1
                           threads: 1
                           priority: 1
                         }
                       )pb"));
  EXPECT_THAT(registry.Classify(Profile("x86_64", {}, kGiB)), IsOkAndHolds(std::string("beta")));
}

TEST(DeviceClassRegistry, FindListsKnownClasses) {
  const DeviceClassRegistry registry = DeviceClassRegistry::Defaults();
  ASSERT_OK_AND_ASSIGN(const v1::DeviceClass* rpi4, registry.Find("rpi4"));
  EXPECT_EQ(rpi4->arch(), "aarch64");
  EXPECT_EQ(rpi4->training_memory_budget_bytes(), 2 << 20);
  EXPECT_THAT(registry.Find("rpi3"),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("no device class 'rpi3' (known: jetson-orin-nano, rpi4, rpi5, "
                                 "x86-avx2, x86-avx512)")));
}

TEST(DeviceClassRegistry, TextSyntaxErrorsNameLineAndColumn) {
  // Line 3 lacks the ':' after the field name of a scalar.
  EXPECT_THAT(DeviceClassRegistry::FromTextProto("classes {\n"
                                                 "  name: \"a\"\n"
                                                 "  arch \"x86_64\"\n"
                                                 "}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 3, column 8")));
  EXPECT_THAT(
      DeviceClassRegistry::FromTextProto("classes {\n"
                                         "  name: \"a\"\n"
                                         "  arch: \"x86_64\"\n"
                                         "  budget: 5\n"
                                         "}\n"),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("line 4, column "), HasSubstr("no field named \"budget\""))));
  EXPECT_THAT(DeviceClassRegistry::FromTextProto("classes { threads: \"four\" }"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 1, column 20")));
}

TEST(DeviceClassRegistry, InvalidFieldsNameClassFieldAndLine) {
  const std::string valid_rest = "  arch: \"x86_64\"\n  training_memory_budget_bytes: 1\n";
  EXPECT_THAT(DeviceClassRegistry::FromTextProto("classes {\n"
                                                 "  name: \"x86-avx2\"\n"
                                                 "  arch: \"x86_64\"\n"
                                                 "  training_memory_budget_bytes: -5\n"
                                                 "  threads: 1\n"
                                                 "}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("line 4, column 3: classes[0]: training_memory_budget_bytes "
                                 "must be > 0, got -5")));
  EXPECT_THAT(DeviceClassRegistry::FromTextProto(
                  "classes { name: \"a\" arch: \"x\" training_memory_budget_bytes: 1 threads: 1 "
                  "training_flops_per_second: -1 }"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("training_flops_per_second must be finite and >= 0, got -1")));
  EXPECT_THAT(DeviceClassRegistry::FromTextProto(
                  "classes { name: \"a\" arch: \"x\" training_memory_budget_bytes: 1 threads: 1 "
                  "training_flops_per_second: nan }"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("training_flops_per_second")));
  // threads is absent, so the error points at the class.
  EXPECT_THAT(DeviceClassRegistry::FromTextProto("classes { name: \"a\" arch: \"x\" "
                                                 "training_memory_budget_bytes: 1 }\n"
                                                 "classes { name: \"b\" arch: \"x\" "
                                                 "training_memory_budget_bytes: 1 }\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("line 1, column 1: classes[0]: threads must be >= 1, got 0")));
  EXPECT_THAT(DeviceClassRegistry::FromTextProto("classes {\n"
                                                 "  name: \"Pi4\"\n" +
                                                 valid_rest + "  threads: 1\n}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("line 2, column 3: classes[0]: name 'Pi4' must match "
                                 "[a-z0-9-]{1,64}")));
  EXPECT_THAT(DeviceClassRegistry::FromTextProto(
                  absl::StrCat("classes { name: \"", std::string(65, 'a'),
                               "\" arch: \"x\" training_memory_budget_bytes: 1 threads: 1 }")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must match")));
  EXPECT_THAT(DeviceClassRegistry::FromTextProto(
                  "classes { name: \"a\" training_memory_budget_bytes: 1 threads: 1 }"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("arch is empty")));
  EXPECT_THAT(DeviceClassRegistry::FromTextProto(
                  "classes { name: \"a\" arch: \"x\" required_isa: \"avx2\" required_isa: \"\" "
                  "training_memory_budget_bytes: 1 threads: 1 }"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("line 1, column 52: classes[0]: required_isa[1] is empty")));
}

TEST(DeviceClassRegistry, DuplicateNamesAreRejected) {
  const std::string one_class =
      "classes {\n"
      "  name: \"rpi4\"\n"
      "  arch: \"aarch64\"\n"
      "  training_memory_budget_bytes: 1048576\n"
      "  threads: 4\n"
      "}\n";
  EXPECT_THAT(DeviceClassRegistry::FromTextProto(one_class + one_class),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("line 8, column 3: classes[1]: name 'rpi4' is already used by "
                                 "classes[0] at line 1, column 1")));
  v1::DeviceClassConfig config = DeviceClassRegistry::Defaults().ToConfig();
  *config.add_classes() = config.classes(0);
  EXPECT_THAT(DeviceClassRegistry::FromConfig(config),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("classes[5]: name 'rpi4' is already used by classes[0]")));
}

TEST(DeviceClassRegistry, RejectsEmptyAndOversizedConfigs) {
  EXPECT_THAT(DeviceClassRegistry::FromTextProto("# nothing\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no classes")));
  EXPECT_THAT(DeviceClassRegistry::FromTextProto(std::string(kMaxDeviceClassConfigBytes + 1, ' ')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte limit")));
}

TEST(DeviceClassRegistry, FromFileReportsThePath) {
  EXPECT_THAT(DeviceClassRegistry::FromFile("/nonexistent/classes.textproto"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/classes.textproto")));
}

TEST(ValidateDeviceClass, NamesTheClassAndField) {
  v1::DeviceClass c = DeviceClassRegistry::Defaults().classes()[0];
  c.set_threads(0);
  EXPECT_THAT(ValidateDeviceClass(c), StatusIs(absl::StatusCode::kInvalidArgument,
                                               HasSubstr("device class 'rpi4': threads must be")));
  c.set_threads(1);
  c.set_min_memory_bytes(-1);
  EXPECT_THAT(ValidateDeviceClass(c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("min_memory_bytes")));
}

}  // namespace
}  // namespace fleettune::server
