#include "cli/commands.h"

#include <algorithm>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/base/file.h"
#include "engine/base/status_matchers.h"
#include "engine/search/contribution.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/fleettune/v1/fleet_service.grpc.pb.h"

namespace fleettune::cli {
namespace {

using ::fleettune::testing::IsOk;
using ::fleettune::testing::StatusIs;
using ::testing::_;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

// 2025-06-01T12:00:00Z
const absl::Time kNow = absl::FromUnixSeconds(1748779200);

using Flags = std::map<std::string, std::string>;

// The flags of a minimal valid `submit`.
Flags MinimalSubmit() {
  return {{"name", "mnist-ft"},
          {"dataset", "fashion-mnist"},
          {"layers", "784,256,128,10"},
          {"classes", "rpi4:2,x86-avx2:1"}};
}

v1::JobSpec Parse(const std::string& text) {
  v1::JobSpec spec;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &spec)) << text;
  return spec;
}

MATCHER_P(EqualsProto, expected, "") {
  google::protobuf::util::MessageDifferencer differ;
  std::string diff;
  differ.ReportDifferencesToString(&diff);
  if (differ.Compare(expected, arg)) return true;
  *result_listener << diff;
  return false;
}

std::string WriteTempFile(const std::string& name, const std::string& bytes) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/", name);
  EXPECT_OK(engine::WriteFileAtomically(path, bytes));
  return path;
}

// ---------------------------------------------------------------------------
// ParseCommandLine

TEST(ParseCommandLine, GlobalFlagsBeforeAndAfterTheCommand) {
  ASSERT_OK_AND_ASSIGN(CommandLine line,
                       ParseCommandLine({"--server=coord:7443", "get", "j-1", "--json", "--timeout",
                                         "5", "--token=abc"}));
  EXPECT_EQ(line.command, Command::kGet);
  EXPECT_THAT(line.args, ElementsAre("j-1"));
  EXPECT_EQ(
      line.global_flags,
      (Flags{{"server", "coord:7443"}, {"json", "true"}, {"timeout", "5"}, {"token", "abc"}}));
  EXPECT_THAT(line.flags, IsEmpty());
}

TEST(ParseCommandLine, CommandFlagsTakeSeparateOrJoinedValuesAndUnderscores) {
  ASSERT_OK_AND_ASSIGN(CommandLine line,
                       ParseCommandLine({"submit", "--name", "x", "--lr=-1", "--weight_decay",
                                         "0.1", "--lr", "0.2"}));
  EXPECT_EQ(line.command, Command::kSubmit);
  EXPECT_EQ(line.flags, (Flags{{"name", "x"}, {"lr", "0.2"}, {"weight-decay", "0.1"}}));
}

TEST(ParseCommandLine, DoubleDashEndsFlags) {
  ASSERT_OK_AND_ASSIGN(CommandLine line, ParseCommandLine({"get", "--", "--odd-id"}));
  EXPECT_THAT(line.args, ElementsAre("--odd-id"));
}

TEST(ParseCommandLine, HelpAnywhere) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"help"}, {"--help"}, {"-h"}, {"submit", "--name=x", "--help"}}) {
    ASSERT_OK_AND_ASSIGN(CommandLine line, ParseCommandLine(args));
    EXPECT_EQ(line.command, Command::kHelp) << args.front();
  }
}

TEST(ParseCommandLine, RejectsWhatItDoesNotKnow) {
  EXPECT_THAT(ParseCommandLine({}),
              StatusIs(absl::StatusCode::kInvalidArgument, "no command given"));
  EXPECT_THAT(ParseCommandLine({"frob"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown command \"frob\""));
  EXPECT_THAT(ParseCommandLine({"list", "--lr=1"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown flag --lr for list"));
  EXPECT_THAT(ParseCommandLine({"--bogus", "list"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown flag --bogus"));
  EXPECT_THAT(
      ParseCommandLine({"--lr=1", "submit"}),
      StatusIs(absl::StatusCode::kInvalidArgument, "--lr belongs after the command (submit)"));
  EXPECT_THAT(ParseCommandLine({"list", "-v"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown flag \"-v\""));
  EXPECT_THAT(ParseCommandLine({"submit", "--name"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "--name needs a value"));
  EXPECT_THAT(ParseCommandLine({"watch"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "watch needs JOB_ID"));
  EXPECT_THAT(ParseCommandLine({"get", "j-1", "j-2"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "get: unexpected argument \"j-2\""));
  EXPECT_THAT(ParseCommandLine({"classes", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unexpected argument")));
}

TEST(Usage, ListsEveryCommandAndFlag) {
  const std::string usage = Usage();
  for (const char* word : {"submit",
                           "list",
                           "get JOB_ID",
                           "watch JOB_ID",
                           "cancel JOB_ID",
                           "devices",
                           "classes",
                           "--server=HOST:PORT",
                           "--token=TOKEN",
                           "--json",
                           "--timeout=SECONDS",
                           "--job-file=PATH",
                           "--name=NAME",
                           "--model=ARCH",
                           "--layers=N,N,...",
                           "--weights=PATH",
                           "--dataset=NAME",
                           "--task=TASK",
                           "--optimizer=sgd|adamw",
                           "--lr=RATE",
                           "--momentum=M",
                           "--weight-decay=W",
                           "--epochs=N",
                           "--batch=N",
                           "--seed=N",
                           "--scheme=SCHEME",
                           "--classes=CLASS:N,...",
                           "--min-devices=N",
                           "--deadline=WHEN",
                           "--state=STATE,...",
                           "--class=CLASS",
                           "FLEETTUNE_TOKEN",
                           "exit status"}) {
    EXPECT_THAT(usage, HasSubstr(word));
  }
  for (absl::string_view line : absl::StrSplit(usage, '\n')) {
    EXPECT_LE(line.size(), 80u) << line;
  }
}

// ---------------------------------------------------------------------------
// BuildInvocation

TEST(BuildInvocation, GlobalDefaultsAndTokenFromEnvironment) {
  ASSERT_OK_AND_ASSIGN(CommandLine line, ParseCommandLine({"classes"}));
  ASSERT_OK_AND_ASSIGN(Invocation inv, BuildInvocation(line, "env-token", kNow));
  EXPECT_EQ(inv.command, Command::kClasses);
  EXPECT_EQ(inv.global.server, "localhost:7443");
  EXPECT_EQ(inv.global.token, "env-token");
  EXPECT_FALSE(inv.global.json);
  EXPECT_EQ(inv.global.timeout, absl::Seconds(30));
}

TEST(BuildInvocation, GlobalFlagsOverrideDefaults) {
  ASSERT_OK_AND_ASSIGN(CommandLine line,
                       ParseCommandLine({"classes", "--token=flag-token", "--json=false",
                                         "--timeout=2.5", "--server=10.0.0.2:9000"}));
  ASSERT_OK_AND_ASSIGN(Invocation inv, BuildInvocation(line, "env-token", kNow));
  EXPECT_EQ(inv.global.token, "flag-token");
  EXPECT_FALSE(inv.global.json);
  EXPECT_EQ(inv.global.timeout, absl::Milliseconds(2500));
  EXPECT_EQ(inv.global.server, "10.0.0.2:9000");

  ASSERT_OK_AND_ASSIGN(line, ParseCommandLine({"classes", "--timeout=2m"}));
  ASSERT_OK_AND_ASSIGN(inv, BuildInvocation(line, "", kNow));
  EXPECT_EQ(inv.global.timeout, absl::Minutes(2));
}

TEST(BuildInvocation, BadGlobalValuesNameTheFlag) {
  const auto build = [](std::vector<std::string> args, absl::string_view env = "") {
    absl::StatusOr<CommandLine> line = ParseCommandLine(args);
    EXPECT_OK(line);
    return BuildInvocation(*line, env, kNow).status();
  };
  EXPECT_THAT(build({"classes", "--timeout=0"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--timeout: want a positive number of seconds, got \"0\""));
  EXPECT_THAT(
      build({"classes", "--json=maybe"}),
      StatusIs(absl::StatusCode::kInvalidArgument, "--json: must be true or false, got \"maybe\""));
  EXPECT_THAT(build({"classes", "--server="}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--server: want HOST:PORT")));
  EXPECT_THAT(build({"classes", "--token=a b"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--token: ")));
  EXPECT_THAT(build({"classes"}, "tok\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("FLEETTUNE_TOKEN: ")));
}

TEST(BuildInvocation, CommandInputs) {
  ASSERT_OK_AND_ASSIGN(CommandLine line, ParseCommandLine({"list", "--state=running,FAILED"}));
  ASSERT_OK_AND_ASSIGN(Invocation inv, BuildInvocation(line, "", kNow));
  EXPECT_THAT(inv.states, ElementsAre(v1::JOB_STATE_RUNNING, v1::JOB_STATE_FAILED));

  ASSERT_OK_AND_ASSIGN(line, ParseCommandLine({"devices", "--class=rpi4"}));
  ASSERT_OK_AND_ASSIGN(inv, BuildInvocation(line, "", kNow));
  EXPECT_EQ(inv.device_class, "rpi4");

  ASSERT_OK_AND_ASSIGN(line, ParseCommandLine({"devices", "--class=Rpi 4"}));
  EXPECT_THAT(BuildInvocation(line, "", kNow),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--class: ")));

  ASSERT_OK_AND_ASSIGN(line, ParseCommandLine({"cancel", "j-9"}));
  ASSERT_OK_AND_ASSIGN(inv, BuildInvocation(line, "", kNow));
  EXPECT_EQ(inv.job_id, "j-9");

  ASSERT_OK_AND_ASSIGN(line, ParseCommandLine({"get", ""}));
  EXPECT_THAT(BuildInvocation(line, "", kNow),
              StatusIs(absl::StatusCode::kInvalidArgument, "bad JOB_ID \"\""));
}

TEST(ParseJobStates, RejectsUnknownStates) {
  EXPECT_THAT(ParseJobStates("running,done"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--state: \"done\" is not pending, running, succeeded, failed or "
                       "cancelled"));
  EXPECT_THAT(ParseJobStates("unspecified"), StatusIs(absl::StatusCode::kInvalidArgument, _));
  EXPECT_THAT(ParseJobStates(""), StatusIs(absl::StatusCode::kInvalidArgument, _));
  ASSERT_OK_AND_ASSIGN(auto states, ParseJobStates("pending,pending,Cancelled"));
  EXPECT_THAT(states, ElementsAre(v1::JOB_STATE_PENDING, v1::JOB_STATE_CANCELLED));
}

// ---------------------------------------------------------------------------
// BuildJobSpec

TEST(BuildJobSpec, FlagsWithDefaults) {
  ASSERT_OK_AND_ASSIGN(v1::JobSpec spec, BuildJobSpec(MinimalSubmit(), kNow));
  EXPECT_THAT(spec, EqualsProto(Parse(R"pb(
                name: "mnist-ft"
                base_model {
                  architecture: "mlp"
                  layer_sizes: [ 784, 256, 128, 10 ]
                }
                task: "classification"
                dataset: "fashion-mnist"
                hyper_parameters {
                  optimizer: OPTIMIZER_KIND_SGD
                  learning_rate: 0.05
                  momentum: 0.9
                  epochs: 5
                  batch_size: 64
                }
                scheme { fit_class_budget: true }
                targets { device_class: "rpi4" devices: 2 }
                targets { device_class: "x86-avx2" devices: 1 }
              )pb")));
}

TEST(BuildJobSpec, EveryFlag) {
  const std::string weights =
      WriteTempFile("w.safetensors", std::string("\x02\0\0\0\0\0\0\0{}", 10));
  Flags flags = MinimalSubmit();
  flags.insert({{"model", "mlp"},
                {"weights", weights},
                {"task", "classification"},
                {"optimizer", "adamw"},
                {"lr", "0.001"},
                {"weight-decay", "0.01"},
                {"epochs", "3"},
                {"batch", "32"},
                {"seed", "18446744073709551615"},
                {"scheme", "freeze:fc1,fc2"},
                {"min-devices", "2"},
                {"deadline", "30m"}});
  ASSERT_OK_AND_ASSIGN(v1::JobSpec spec, BuildJobSpec(flags, kNow));
  EXPECT_THAT(spec, EqualsProto(Parse(R"pb(
                name: "mnist-ft"
                base_model {
                  architecture: "mlp"
                  layer_sizes: [ 784, 256, 128, 10 ]
                  safetensors_weights: "\002\000\000\000\000\000\000\000{}"
                  init_seed: 18446744073709551615
                }
                task: "classification"
                dataset: "fashion-mnist"
                hyper_parameters {
                  optimizer: OPTIMIZER_KIND_ADAMW
                  learning_rate: 0.001
                  weight_decay: 0.01
                  epochs: 3
                  batch_size: 32
                  seed: 18446744073709551615
                }
                scheme { preset: "freeze:fc1,fc2" }
                targets { device_class: "rpi4" devices: 2 }
                targets { device_class: "x86-avx2" devices: 1 }
                completion {
                  min_devices: 2
                  deadline { seconds: 1748781000 }
                }
              )pb")));
}

TEST(BuildJobSpec, SchemesAndDeadlines) {
  Flags flags = MinimalSubmit();
  for (const auto& [text, want] :
       std::vector<std::pair<std::string, std::string>>{{"full", "preset: \"full\""},
                                                        {"bias-only", "preset: \"bias-only\""},
                                                        {"last-k:02", "preset: \"last-k:2\""},
                                                        {"fit", "fit_class_budget: true"}}) {
    flags["scheme"] = text;
    ASSERT_OK_AND_ASSIGN(v1::JobSpec spec, BuildJobSpec(flags, kNow));
    v1::SchemeSpec expected;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(want, &expected));
    EXPECT_THAT(spec.scheme(), EqualsProto(expected)) << text;
  }
  flags["deadline"] = "2025-06-02T00:00:00.5+02:00";
  ASSERT_OK_AND_ASSIGN(v1::JobSpec spec, BuildJobSpec(flags, kNow));
  EXPECT_EQ(spec.completion().deadline().seconds(), 1748815200);
  EXPECT_EQ(spec.completion().deadline().nanos(), 500000000);
}

TEST(BuildJobSpec, MicroBatches) {
  Flags flags = MinimalSubmit();
  flags.insert({{"batch", "32"}, {"micro-batches", "4"}});
  ASSERT_OK_AND_ASSIGN(v1::JobSpec spec, BuildJobSpec(flags, kNow));
  EXPECT_EQ(spec.hyper_parameters().micro_batches(), 4);
  EXPECT_FALSE(spec.hyper_parameters().fit_micro_batches());
  flags["micro-batches"] = "fit";
  ASSERT_OK_AND_ASSIGN(spec, BuildJobSpec(flags, kNow));
  EXPECT_EQ(spec.hyper_parameters().micro_batches(), 0);
  EXPECT_TRUE(spec.hyper_parameters().fit_micro_batches());
}

TEST(BuildJobSpec, ProfileRidesWithFit) {
  engine::search::ContributionProfile profile;
  profile.model_name = "mlp";
  profile.base_accuracy = 0.5;
  profile.base_loss = 1.0;
  profile.entries = {{"fc1.bias", 0.75, 0.5, 0.25, 0.5}};
  const std::string path = WriteTempFile("mlp.profile", engine::search::ProfileToText(profile));
  Flags flags = MinimalSubmit();
  flags["profile"] = path;
  ASSERT_OK_AND_ASSIGN(v1::JobSpec spec, BuildJobSpec(flags, kNow));
  EXPECT_TRUE(spec.scheme().fit_class_budget());
  ASSERT_EQ(spec.scheme().contribution_profile().entries_size(), 1);
  EXPECT_EQ(spec.scheme().contribution_profile().entries(0).candidate(), "fc1.bias");
  EXPECT_EQ(spec.scheme().contribution_profile().entries(0).accuracy(), 0.75);

  flags["scheme"] = "full";
  EXPECT_THAT(BuildJobSpec(flags, kNow), StatusIs(absl::StatusCode::kInvalidArgument,
                                                  HasSubstr("--profile: needs --scheme=fit")));
  flags["scheme"] = "fit";
  flags["profile"] = WriteTempFile("bad.profile", "not a profile\n");
  EXPECT_THAT(BuildJobSpec(flags, kNow),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--profile:")));
  flags["profile"] = absl::StrCat(::testing::TempDir(), "/missing.profile");
  EXPECT_THAT(BuildJobSpec(flags, kNow),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing.profile")));
}

constexpr char kJobFile[] = R"pb(
  name: "from-file"
  base_model {
    architecture: "mlp"
    layer_sizes: [ 4, 3 ]
  }
  task: "classification"
  dataset: "file-data"
  hyper_parameters {
    optimizer: OPTIMIZER_KIND_SGD
    learning_rate: 0.1
    momentum: 0.5
    epochs: 2
    batch_size: 8
  }
  scheme { preset: "bias-only" }
  targets { device_class: "rpi5" devices: 4 }
  completion { min_devices: 3 }
)pb";

TEST(BuildJobSpec, JobFileAsIs) {
  const std::string path = WriteTempFile("as_is.textproto", kJobFile);
  ASSERT_OK_AND_ASSIGN(v1::JobSpec spec, BuildJobSpec({{"job-file", path}}, kNow));
  EXPECT_THAT(spec, EqualsProto(Parse(kJobFile)));
}

TEST(BuildJobSpec, FlagsOverrideJobFileFields) {
  const std::string path = WriteTempFile("override.textproto", kJobFile);
  ASSERT_OK_AND_ASSIGN(v1::JobSpec spec, BuildJobSpec({{"job-file", path},
                                                       {"name", "override"},
                                                       {"lr", "0.2"},
                                                       {"classes", "rpi4:3"},
                                                       {"scheme", "fit"}},
                                                      kNow));
  v1::JobSpec expected = Parse(kJobFile);
  expected.set_name("override");
  expected.mutable_hyper_parameters()->set_learning_rate(0.2f);
  expected.clear_targets();
  v1::ClassTarget* target = expected.add_targets();
  target->set_device_class("rpi4");
  target->set_devices(3);
  expected.mutable_scheme()->set_fit_class_budget(true);
  EXPECT_THAT(spec, EqualsProto(expected));
}

TEST(BuildJobSpec, SwitchingToAdamWDropsMomentum) {
  const std::string path = WriteTempFile("adamw.textproto", kJobFile);
  ASSERT_OK_AND_ASSIGN(v1::JobSpec spec,
                       BuildJobSpec({{"job-file", path}, {"optimizer", "adamw"}}, kNow));
  EXPECT_EQ(spec.hyper_parameters().optimizer(), v1::OPTIMIZER_KIND_ADAMW);
  EXPECT_EQ(spec.hyper_parameters().momentum(), 0);
}

TEST(BuildJobSpec, JobFileErrorsNameTheFileAndPlace) {
  const std::string bad = WriteTempFile("bad.textproto", "name: \"x\"\nnmae: \"y\"\n");
  EXPECT_THAT(
      BuildJobSpec({{"job-file", bad}}, kNow),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(StartsWith(absl::StrCat("--job-file: ", bad, ":2:")), HasSubstr("nmae"))));
  EXPECT_THAT(BuildJobSpec({{"job-file", "/nonexistent/job.textproto"}}, kNow),
              StatusIs(absl::StatusCode::kNotFound,
                       "--job-file: /nonexistent/job.textproto: no such file"));
  const std::string partial = WriteTempFile("partial.textproto", "name: \"only-a-name\"\n");
  EXPECT_THAT(BuildJobSpec({{"job-file", partial}}, kNow),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--dataset is required (or set it in --job-file)"));
}

TEST(BuildJobSpec, WeightsMustBeASafetensorsFile) {
  // The start of a PyTorch pickle: its first 8 bytes read as a huge header length.
  std::string pickle_bytes = "\x80\x02}q";
  pickle_bytes += std::string(1, '\0') + "(X\x06" + std::string(3, '\0') + "weight";
  const std::string pickle = WriteTempFile("model.pt", pickle_bytes);
  Flags flags = MinimalSubmit();
  flags["weights"] = pickle;
  EXPECT_THAT(BuildJobSpec(flags, kNow),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(StartsWith(absl::StrCat("--weights: ", pickle,
                                                     " is not a safetensors file (header length")),
                             HasSubstr("exceeds the file's"))));
  flags["weights"] = "/nonexistent.safetensors";
  EXPECT_THAT(
      BuildJobSpec(flags, kNow),
      StatusIs(absl::StatusCode::kNotFound, "--weights: /nonexistent.safetensors: no such file"));
}

struct BadValue {
  Flags changes;  // applied to MinimalSubmit(); an empty value erases the flag
  std::string message;
};

TEST(BuildJobSpec, EachBadValueNamesItsFlag) {
  const std::vector<BadValue> cases = {
      {{{"classes", "rpi4:x"}}, "--classes: \"rpi4:x\": the device count must be an integer >= 1"},
      {{{"classes", "rpi4"}}, "--classes: \"rpi4\": the device count must be an integer >= 1"},
      {{{"classes", "rpi4:0"}}, "--classes: \"rpi4:0\": the device count must be an integer >= 1"},
      {{{"classes", "RPi4:1"}},
       "--classes: \"RPi4:1\": want CLASS:N with CLASS in [a-z0-9-]{1,64}"},
      {{{"classes", "rpi4:1,rpi4:2"}}, "--classes: class \"rpi4\" appears twice"},
      {{{"lr", "-1"}}, "--lr: must be > 0, got \"-1\""},
      {{{"lr", "0"}}, "--lr: must be > 0, got \"0\""},
      {{{"lr", "fast"}}, "--lr: not a number: \"fast\""},
      {{{"lr", "nan"}}, "--lr: not a number: \"nan\""},
      {{{"momentum", "1"}}, "--momentum: must be in [0, 1), got \"1\""},
      {{{"weight-decay", "-0.1"}}, "--weight-decay: must be >= 0, got \"-0.1\""},
      {{{"epochs", "0"}}, "--epochs: must be an integer >= 1, got \"0\""},
      {{{"batch", "3.5"}}, "--batch: must be an integer >= 1, got \"3.5\""},
      {{{"batch", "99999999999"}}, "--batch: must be an integer >= 1, got \"99999999999\""},
      {{{"micro-batches", "3"}}, "--micro-batches: must be fit or divide --batch (64), got \"3\""},
      {{{"micro-batches", "0"}}, "--micro-batches: must be an integer >= 1, got \"0\""},
      {{{"seed", "-3"}}, "--seed: must be an integer >= 0, got \"-3\""},
      {{{"optimizer", "adam"}}, "--optimizer: want sgd or adamw, got \"adam\""},
      {{{"optimizer", "adamw"}, {"momentum", "0.9"}},
       "--momentum: applies only to --optimizer=sgd"},
      {{{"scheme", "dense"}},
       "--scheme: \"dense\" is not full, bias-only, last-k:N, freeze:LAYER[,LAYER...], sparse, "
       "pockengine or fit"},
      {{{"scheme", "last-k:0"}}, "--scheme: last-k needs a layer count >= 1, got \"0\""},
      {{{"scheme", "freeze:"}}, "--scheme: freeze needs layer names like fc1,fc2, got \"\""},
      {{{"scheme", "freeze:fc1,,fc2"}},
       "--scheme: freeze needs layer names like fc1,fc2, got \"fc1,,fc2\""},
      {{{"layers", "784,,10"}}, "--layers: bad size \"\" in \"784,,10\""},
      {{{"layers", "784,-5,10"}}, "--layers: bad size \"-5\" in \"784,-5,10\""},
      {{{"layers", "10"}}, "--layers: want at least input and output sizes, got \"10\""},
      {{{"model", "MLP!"}}, "--model: want an architecture like mlp, got \"MLP!\""},
      {{{"deadline", "tomorrow"}},
       "--deadline: \"tomorrow\" is neither an RFC 3339 time (2025-06-01T12:00:00Z) nor a "
       "duration (30m, 2h)"},
      {{{"deadline", "-5m"}}, "--deadline: duration must be positive, got \"-5m\""},
      {{{"deadline", "2025-06-01T11:00:00Z"}},
       "--deadline: \"2025-06-01T11:00:00Z\" is in the past"},
      {{{"min-devices", "-1"}}, "--min-devices: must be an integer >= 0, got \"-1\""},
      {{{"min-devices", "4"}}, "--min-devices: 4 is more than the 3 devices --classes asks for"},
      {{{"name", "my job"}}, "--name: \"my job\" must match [A-Za-z0-9._-]{1,64}"},
      {{{"name", std::string(65, 'a')}}, "must match [A-Za-z0-9._-]{1,64}"},
      {{{"dataset", ""}}, "--dataset is required"},
      {{{"name", ""}}, "--name is required"},
      {{{"classes", ""}}, "--classes is required, e.g. --classes=rpi4:2,x86-avx2:1"},
      {{{"layers", ""}}, "--layers is required for --model=mlp"},
      {{{"task", "\x01"}}, ""},  // accepted locally; the coordinator knows its tasks
  };
  for (const BadValue& c : cases) {
    Flags flags = MinimalSubmit();
    for (const auto& [flag, value] : c.changes) {
      if (value.empty()) {
        flags.erase(flag);
      } else {
        flags[flag] = value;
      }
    }
    const absl::StatusOr<v1::JobSpec> spec = BuildJobSpec(flags, kNow);
    if (c.message.empty()) {
      EXPECT_THAT(spec, IsOk());
      continue;
    }
    EXPECT_THAT(spec, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)))
        << c.changes.begin()->first << "=" << c.changes.begin()->second;
  }
}

// ---------------------------------------------------------------------------
// FromGrpcStatus

TEST(FromGrpcStatus, KeepsTheCodeAndAddsHints) {
  GlobalOptions options;
  options.server = "coord:7443";
  options.timeout = absl::Seconds(5);
  EXPECT_OK(FromGrpcStatus(grpc::Status::OK, options));
  EXPECT_THAT(FromGrpcStatus(
                  grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or bad operator token"),
                  options),
              StatusIs(absl::StatusCode::kUnauthenticated,
                       "UNAUTHENTICATED: missing or bad operator token (set --token or "
                       "FLEETTUNE_TOKEN)"));
  EXPECT_THAT(
      FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused"), options),
      StatusIs(absl::StatusCode::kUnavailable,
               "UNAVAILABLE: connection refused (coordinator at coord:7443)"));
  EXPECT_THAT(FromGrpcStatus(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded"),
                             options),
              StatusIs(absl::StatusCode::kDeadlineExceeded,
                       "DEADLINE_EXCEEDED: Deadline Exceeded (--timeout=5s)"));
  EXPECT_THAT(FromGrpcStatus(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                          "rpi4: plan needs 70 MiB\x1b[2J, budget 64 MiB"),
                             options),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "FAILED_PRECONDITION: rpi4: plan needs 70 MiB?[2J, budget 64 MiB"));
  EXPECT_THAT(FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, ""), options),
              StatusIs(absl::StatusCode::kNotFound, "NOT_FOUND: (no message)"));
}

// ---------------------------------------------------------------------------
// Cli against an in-process fake coordinator (no network).

v1::Job JobIn(v1::JobState state, int completed) {
  v1::Job job;
  job.set_job_id("j-1");
  job.mutable_spec()->set_name("ft");
  job.set_state(state);
  v1::ClassProgress* p = job.add_progress();
  p->set_device_class("rpi4");
  p->set_wanted(2);
  p->set_completed(completed);
  return job;
}

class FakeFleetService final : public v1::FleetService::Service {
 public:
  grpc::Status CreateJob(grpc::ServerContext* context, const v1::CreateJobRequest* request,
                         v1::CreateJobResponse* response) override {
    absl::MutexLock lock(&mu_);
    RecordAuthorization(context);
    if (reject_token_) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or bad operator token");
    }
    last_spec_ = request->spec();
    *response->mutable_job() = JobIn(v1::JOB_STATE_PENDING, 0);
    *response->mutable_job()->mutable_spec() = request->spec();
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override {
    absl::MutexLock lock(&mu_);
    RecordAuthorization(context);
    last_states_.assign(request->states().begin(), request->states().end());
    *response->add_jobs() = JobIn(v1::JOB_STATE_RUNNING, 1);
    return grpc::Status::OK;
  }

  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::WatchJobResponse>* writer) override {
    std::vector<v1::Job> updates;
    {
      absl::MutexLock lock(&mu_);
      RecordAuthorization(context);
      updates = watch_updates_;
    }
    if (request->job_id() != "j-1") return grpc::Status(grpc::StatusCode::NOT_FOUND, "no job");
    for (const v1::Job& job : updates) {
      v1::WatchJobResponse response;
      *response.mutable_job() = job;
      if (!writer->Write(response)) break;
    }
    return grpc::Status::OK;
  }

  void set_reject_token(bool reject) {
    absl::MutexLock lock(&mu_);
    reject_token_ = reject;
  }
  void set_watch_updates(std::vector<v1::Job> updates) {
    absl::MutexLock lock(&mu_);
    watch_updates_ = std::move(updates);
  }
  std::string authorization() {
    absl::MutexLock lock(&mu_);
    return authorization_;
  }
  v1::JobSpec last_spec() {
    absl::MutexLock lock(&mu_);
    return last_spec_;
  }
  std::vector<int> last_states() {
    absl::MutexLock lock(&mu_);
    return last_states_;
  }

 private:
  void RecordAuthorization(grpc::ServerContext* context) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = context->client_metadata().find("authorization");
    authorization_ = it == context->client_metadata().end()
                         ? "<none>"
                         : std::string(it->second.data(), it->second.size());
  }

  absl::Mutex mu_;
  bool reject_token_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<v1::Job> watch_updates_ ABSL_GUARDED_BY(mu_);
  std::string authorization_ ABSL_GUARDED_BY(mu_);
  v1::JobSpec last_spec_ ABSL_GUARDED_BY(mu_);
  std::vector<int> last_states_ ABSL_GUARDED_BY(mu_);
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1::FleetService::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  void TearDown() override { server_->Shutdown(); }

  Cli MakeCli(bool json = false, bool redraw = false) {
    CliOptions options;
    options.global.token = "op-token";
    options.global.json = json;
    options.redraw_in_place = redraw;
    options.clock = [] { return kNow; };
    return Cli(stub_.get(), options, &out_, &err_);
  }

  FakeFleetService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::FleetService::Stub> stub_;
  std::ostringstream out_;
  std::ostringstream err_;
};

TEST_F(CliTest, SubmitSendsSpecAndBearerToken) {
  ASSERT_OK_AND_ASSIGN(v1::JobSpec spec, BuildJobSpec(MinimalSubmit(), kNow));
  EXPECT_OK(MakeCli().Submit(spec));
  EXPECT_EQ(service_.authorization(), "Bearer op-token");
  EXPECT_THAT(service_.last_spec(), EqualsProto(spec));
  EXPECT_THAT(out_.str(),
              StartsWith("job         j-1\nname        mnist-ft\nstate       pending\n"));
  EXPECT_EQ(err_.str(), "follow it with: fleettune watch j-1\n");
}

TEST_F(CliTest, RejectedTokenBecomesOneLineWithAHint) {
  service_.set_reject_token(true);
  EXPECT_THAT(MakeCli().Submit(v1::JobSpec()),
              StatusIs(absl::StatusCode::kUnauthenticated,
                       "UNAUTHENTICATED: missing or bad operator token (set --token or "
                       "FLEETTUNE_TOKEN)"));
  EXPECT_EQ(out_.str(), "");
}

TEST_F(CliTest, NoTokenSendsNoAuthorization) {
  CliOptions options;
  Cli cli(stub_.get(), options, &out_, &err_);
  EXPECT_OK(cli.List({}));
  EXPECT_EQ(service_.authorization(), "<none>");
}

TEST_F(CliTest, ListSendsStatesAndPrintsJsonOnOneLine) {
  EXPECT_OK(MakeCli(/*json=*/true).List({v1::JOB_STATE_RUNNING, v1::JOB_STATE_FAILED}));
  EXPECT_THAT(service_.last_states(), ElementsAre(v1::JOB_STATE_RUNNING, v1::JOB_STATE_FAILED));
  const std::string out = out_.str();
  EXPECT_THAT(out, StartsWith(R"({"jobs":[{"jobId":"j-1",)"));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
}

TEST_F(CliTest, UnimplementedRpcIsAnError) {
  EXPECT_THAT(MakeCli().Classes(),
              StatusIs(absl::StatusCode::kUnimplemented, StartsWith("UNIMPLEMENTED: ")));
}

TEST_F(CliTest, WatchPrintsEachUpdateAndSucceedsWithTheJob) {
  service_.set_watch_updates({JobIn(v1::JOB_STATE_RUNNING, 0), JobIn(v1::JOB_STATE_RUNNING, 1),
                              JobIn(v1::JOB_STATE_SUCCEEDED, 2)});
  EXPECT_OK(MakeCli().Watch("j-1"));
  const std::string out = out_.str();
  EXPECT_THAT(out, HasSubstr("job j-1 (ft): running, 0/2 devices completed\nCLASS"));
  EXPECT_THAT(out, HasSubstr("\n\njob j-1 (ft): running, 1/2 devices completed\nCLASS"));
  EXPECT_THAT(out, HasSubstr("\n\njob j-1 (ft): succeeded, 2/2 devices completed\nCLASS"));
  EXPECT_THAT(out, Not(HasSubstr("\x1b[")));
}

TEST_F(CliTest, WatchOnATerminalRedrawsInPlace) {
  service_.set_watch_updates({JobIn(v1::JOB_STATE_RUNNING, 0), JobIn(v1::JOB_STATE_SUCCEEDED, 2)});
  EXPECT_OK(MakeCli(/*json=*/false, /*redraw=*/true).Watch("j-1"));
  // Headline, table header, one class row: three lines to move up over.
  EXPECT_THAT(out_.str(), HasSubstr("\x1b[3A\r\x1b[Jjob j-1 (ft): succeeded"));
}

TEST_F(CliTest, WatchJsonIsOneObjectPerUpdate) {
  service_.set_watch_updates({JobIn(v1::JOB_STATE_RUNNING, 0), JobIn(v1::JOB_STATE_SUCCEEDED, 2)});
  EXPECT_OK(MakeCli(/*json=*/true).Watch("j-1"));
  const std::vector<std::string> lines = absl::StrSplit(out_.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u);
  for (const std::string& line : lines) {
    v1::WatchJobResponse response;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(line, &response).ok()) << line;
  }
}

TEST_F(CliTest, WatchFailsWhenTheJobFailsOrIsCancelled) {
  v1::Job failed = JobIn(v1::JOB_STATE_FAILED, 0);
  failed.set_state_detail("deadline passed with 0 of 2 devices");
  service_.set_watch_updates({failed});
  EXPECT_THAT(
      MakeCli().Watch("j-1"),
      StatusIs(absl::StatusCode::kAborted, "job j-1 failed: deadline passed with 0 of 2 devices"));
  service_.set_watch_updates({JobIn(v1::JOB_STATE_CANCELLED, 0)});
  EXPECT_THAT(MakeCli().Watch("j-1"),
              StatusIs(absl::StatusCode::kCancelled, "job j-1 was cancelled"));
}

TEST_F(CliTest, WatchStreamEndingEarlyIsAnError) {
  service_.set_watch_updates({JobIn(v1::JOB_STATE_RUNNING, 0)});
  EXPECT_THAT(MakeCli().Watch("j-1"),
              StatusIs(absl::StatusCode::kUnavailable,
                       HasSubstr("ended the watch of job j-1 while it was running")));
  EXPECT_THAT(MakeCli().Watch("j-2"), StatusIs(absl::StatusCode::kNotFound, "NOT_FOUND: no job"));
}

}  // namespace
}  // namespace fleettune::cli
