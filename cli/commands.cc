#include "cli/commands.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cli/compile.h"
#include "cli/format.h"
#include "cli/search.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "engine/plan/profile_io.h"
#include "engine/search/contribution.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace fleettune::cli {
namespace {

// ---------------------------------------------------------------------------
// The command table: ParseCommandLine, BuildInvocation and Usage all read it.

struct FlagInfo {
  const char* name;
  const char* value;  // nullptr for a boolean flag
  const char* help;
};

struct CommandInfo {
  Command command;
  const char* name;
  const char* arg;  // the one positional argument, or nullptr for none
  const char* summary;
  std::vector<FlagInfo> flags;
};

const std::vector<FlagInfo>& GlobalFlags() {
  static const auto* flags = new std::vector<FlagInfo>{
      {"server", "HOST:PORT", "coordinator address (default localhost:7443)"},
      {"token", "TOKEN", "operator bearer token (default $FLEETTUNE_TOKEN)"},
      {"json", nullptr, "print responses as JSON, one object per line"},
      {"timeout", "SECONDS", "deadline of each call (default 30); watch has none"},
  };
  return *flags;
}

const std::vector<CommandInfo>& Commands() {
  static const auto* commands = new std::vector<CommandInfo>{
      {Command::kSubmit,
       "submit",
       nullptr,
       "create a fine-tuning job from flags and/or --job-file",
       {
           {"job-file", "PATH", "a fleettune.v1.JobSpec in protobuf text format"},
           {"name", "NAME", "job name, [A-Za-z0-9._-]{1,64} (required)"},
           {"model", "ARCH", "base model architecture (default mlp)"},
           {"layers", "N,N,...", "MLP sizes: input,hidden...,classes (required)"},
           {"weights", "PATH",
            "base weights, safetensors, at most 64 MiB\n(default: initialized from --seed)"},
           {"dataset", "NAME", "dataset the agents map to local files (required)"},
           {"task", "TASK", "(default classification)"},
           {"optimizer", "sgd|adamw", "(default sgd)"},
           {"lr", "RATE", "learning rate > 0 (default 0.05)"},
           {"momentum", "M", "SGD momentum in [0, 1) (default 0.9)"},
           {"weight-decay", "W", ">= 0 (default 0)"},
           {"epochs", "N", "passes over the local training set (default 5)"},
           {"batch", "N", "batch size (default 64)"},
           {"micro-batches", "K|fit",
            "run each batch in K slices, gradients accumulated\nin SGD momentum (divides --batch; "
            "default 1);\nfit: per class, the fewest slices that fit its\nbudget"},
           {"seed", "N", "shuffling and initialization seed (default 0)"},
           {"scheme", "SCHEME",
            "full, bias-only, last-k:N, freeze:LAYER[,LAYER...],\n"
            "sparse, pockengine (engine/scheme/scheme.h),\n"
            "or fit: per class, the most training that fits\n"
            "its memory budget (default fit)"},
           {"profile", "PATH",
            "with fit: a contribution profile from `fleettune\nsearch` (in its --profile-cache); "
            "each class then\ntrains its searched scheme"},
           {"classes", "CLASS:N,...", "devices per class: rpi4:2,x86-avx2:1 (required)"},
           {"min-devices", "N", "succeed once N devices completed (default 0 = all)"},
           {"deadline", "WHEN", "RFC 3339 time, or a duration from now: 30m, 2h\n(default none)"},
       }},
      {Command::kList,
       "list",
       nullptr,
       "list jobs, newest first",
       {{"state", "STATE,...",
         "only jobs in these states: pending, running,\nsucceeded, failed, cancelled"}}},
      {Command::kGet, "get", "JOB_ID", "show a job: its spec, plan and progress per class", {}},
      {Command::kWatch,
       "watch",
       "JOB_ID",
       "follow a job until it ends; exit 0 if it succeeded",
       {}},
      {Command::kCancel, "cancel", "JOB_ID", "cancel a job", {}},
      {Command::kDevices,
       "devices",
       nullptr,
       "list registered devices",
       {{"class", "CLASS", "only devices of this class"}}},
      {Command::kClasses, "classes", nullptr, "list device classes", {}},
      {Command::kCompile,
       "compile",
       nullptr,
       "compile a training plan locally and print its cost\n(no coordinator needed)",
       {
           {"model", "NAME",
            "zoo model: mlp, cnn, mobilenet_v2, resnet18,\nbert_mini, llama_mini (required)"},
           {"scheme", "SCHEME",
            "full, bias-only, last-k:N, freeze:LAYER,...,\nsparse, pockengine (default full)"},
           {"scheme-file", "PATH", "an UpdateScheme in protobuf text format"},
           {"device-class", "CLASS", "device class (default x86-avx2)"},
           {"device-classes", "PATH", "class config, text proto (default built-in classes)"},
           {"batch", "N", "examples per step (default 8)"},
           {"micro-batches", "K|fit",
            "run each batch in K slices, gradients accumulated\nin SGD momentum (divides --batch; "
            "default 1);\nfit: the fewest slices that fit the class's budget"},
           {"batchnorm", "frozen|train", "BatchNorm statistics (default frozen)"},
           {"optimizer", "sgd|adamw", "(default sgd)"},
           {"lr", "RATE", "learning rate > 0 (default 0.01)"},
           {"momentum", "M", "SGD momentum in [0, 1) (default 0.9)"},
           {"out", "PATH", "write the compiled plan here"},
       }},
      {Command::kSearch,
       "search",
       nullptr,
       "choose what to train per device class from each update\ncandidate's measured "
       "contribution and cost (no coordinator needed)",
       {
           {"model", "NAME", "zoo model, e.g. mlp or cnn (required)"},
           {"base", "PATH", "base weights, safetensors (required)"},
           {"calibration", "FORMAT:PATH",
            "calibration data: mnist-json, opencv-digits-png\nor idx (public or proxy data; "
            "required)"},
           {"calibration-shard", "I/N", "use shard I of N of it (default all)"},
           {"calibration-holdout", "F", "fraction held out to measure gains (default 0.5)"},
           {"task", "NAME", "the profile's label (default the data file's name)"},
           {"steps", "N", "fine-tuning steps per candidate (default 60)"},
           {"calibration-batch", "N", "batch of those steps (default 32)"},
           {"verify-steps", "N",
            "joint fine-tuning steps per shortlisted scheme\n(default 120; 0: no "
            "verification)"},
           {"lr", "RATE", "SGD learning rate (default 0.05)"},
           {"momentum", "M", "SGD momentum in [0, 1) (default 0.9)"},
           {"gain", "accuracy|loss", "what a contribution is (default accuracy)"},
           {"seed", "N", "(default 0)"},
           {"threads", "N", "threads for the calibration runs (default 2)"},
           {"batch", "N", "training batch plans are costed at (default 32)"},
           {"classes", "A,B", "device classes (default all)"},
           {"device-classes", "PATH", "class config, text proto (default built-in classes)"},
           {"budget", "class|overhead:F",
            "each class's budget, or F of full fine-tuning's\ntraining overhead (default class)"},
           {"step-budget-ms", "MS", "step-time budget (modelled per class)"},
           {"profile-cache", "DIR",
            "cached profiles (default\n~/.cache/fleettune/profiles; none: no cache)"},
           {"plot", "PATH", "write contribution against cost per candidate (PNG)"},
           {"out-dir", "DIR", "write <class>.scheme files here"},
       }},
      {Command::kHelp, "help", nullptr, "show this text", {}},
  };
  return *commands;
}

const CommandInfo* FindCommand(absl::string_view name) {
  for (const CommandInfo& c : Commands()) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

const FlagInfo* FindFlag(const std::vector<FlagInfo>& flags, absl::string_view name) {
  for (const FlagInfo& f : flags) {
    if (name == f.name) return &f;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------
// Flag values.

absl::Status FlagError(absl::string_view flag, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", problem));
}

absl::Status Required(absl::string_view flag, absl::string_view hint) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " is required", hint));
}

std::string Quote(absl::string_view text) {
  return absl::StrCat("\"", SanitizeForTerminal(text), "\"");
}

bool MatchesCharset(absl::string_view text, absl::string_view extra, size_t max_length,
                    bool allow_upper) {
  if (text.empty() || text.size() > max_length) return false;
  for (char c : text) {
    const bool ok = absl::ascii_isdigit(c) || absl::ascii_islower(c) ||
                    (allow_upper && absl::ascii_isupper(c)) ||
                    extra.find(c) != absl::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

bool IsJobName(absl::string_view s) { return MatchesCharset(s, "._-", 64, true); }
bool IsClassName(absl::string_view s) { return MatchesCharset(s, "-", 64, false); }

absl::StatusOr<double> ParseNumber(absl::string_view flag, absl::string_view value) {
  double v = 0;
  if (!absl::SimpleAtod(value, &v) || !std::isfinite(v)) {
    return FlagError(flag, absl::StrCat("not a number: ", Quote(value)));
  }
  return v;
}

absl::StatusOr<int32_t> ParsePositiveInt(absl::string_view flag, absl::string_view value,
                                         int32_t min = 1) {
  int32_t v = 0;
  if (!absl::SimpleAtoi(value, &v) || v < min) {
    return FlagError(flag, absl::StrCat("must be an integer >= ", min, ", got ", Quote(value)));
  }
  return v;
}

absl::StatusOr<bool> ParseBool(absl::string_view flag, absl::string_view value) {
  if (value == "true") return true;
  if (value == "false") return false;
  return FlagError(flag, absl::StrCat("must be true or false, got ", Quote(value)));
}

absl::StatusOr<std::vector<int64_t>> ParseLayers(absl::string_view value) {
  std::vector<int64_t> sizes;
  for (absl::string_view part : absl::StrSplit(value, ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) {
      return FlagError("layers", absl::StrCat("bad size ", Quote(part), " in ", Quote(value),
                                              "; want positive integers like 784,256,10"));
    }
    sizes.push_back(v);
  }
  if (sizes.size() < 2) {
    return FlagError("layers",
                     absl::StrCat("want at least input and output sizes, got ", Quote(value)));
  }
  return sizes;
}

absl::StatusOr<v1::SchemeSpec> ParseScheme(absl::string_view value) {
  v1::SchemeSpec scheme;
  if (value == "fit") {
    scheme.set_fit_class_budget(true);
    return scheme;
  }
  if (value == "full" || value == "bias-only" || value == "sparse" || value == "pockengine") {
    scheme.set_preset(std::string(value));
    return scheme;
  }
  if (absl::ConsumePrefix(&value, "last-k:")) {
    int32_t k = 0;
    if (!absl::SimpleAtoi(value, &k) || k < 1) {
      return FlagError("scheme",
                       absl::StrCat("last-k needs a layer count >= 1, got ", Quote(value)));
    }
    scheme.set_preset(absl::StrCat("last-k:", k));
    return scheme;
  }
  if (absl::ConsumePrefix(&value, "freeze:")) {
    for (absl::string_view layer : absl::StrSplit(value, ',')) {
      if (!MatchesCharset(layer, "._", 128, true)) {
        return FlagError("scheme",
                         absl::StrCat("freeze needs layer names like fc1,fc2, got ", Quote(value)));
      }
    }
    scheme.set_preset(absl::StrCat("freeze:", value));
    return scheme;
  }
  return FlagError("scheme", absl::StrCat(Quote(value),
                                          " is not full, bias-only, last-k:N, "
                                          "freeze:LAYER[,LAYER...], sparse, pockengine or fit"));
}

absl::StatusOr<std::vector<v1::ClassTarget>> ParseClasses(absl::string_view value) {
  std::vector<v1::ClassTarget> targets;
  absl::flat_hash_set<std::string> seen;
  for (absl::string_view part : absl::StrSplit(value, ',')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(part, absl::MaxSplits(':', 1));
    if (!IsClassName(kv.first)) {
      return FlagError("classes", absl::StrCat(Quote(part),
                                               ": want CLASS:N with CLASS in [a-z0-9-]{1,64}, "
                                               "e.g. rpi4:2,x86-avx2:1"));
    }
    int32_t devices = 0;
    if (!absl::SimpleAtoi(kv.second, &devices) || devices < 1) {
      return FlagError("classes",
                       absl::StrCat(Quote(part), ": the device count must be an integer >= 1"));
    }
    if (!seen.insert(std::string(kv.first)).second) {
      return FlagError("classes", absl::StrCat("class ", Quote(kv.first), " appears twice"));
    }
    v1::ClassTarget target;
    target.set_device_class(std::string(kv.first));
    target.set_devices(devices);
    targets.push_back(std::move(target));
  }
  return targets;
}

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t seconds = absl::ToUnixSeconds(t);
  out->set_seconds(seconds);
  out->set_nanos(
      static_cast<int32_t>(absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(seconds))));
}

absl::StatusOr<absl::Time> ParseDeadline(absl::string_view value, absl::Time now) {
  absl::Duration d;
  if (absl::ParseDuration(value, &d)) {
    if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
      return FlagError("deadline", absl::StrCat("duration must be positive, got ", Quote(value)));
    }
    return now + d;
  }
  absl::Time t;
  std::string error;
  if (absl::ParseTime(absl::RFC3339_full, value, &t, &error)) {
    if (t <= now) {
      return FlagError("deadline", absl::StrCat(Quote(value), " is in the past"));
    }
    return t;
  }
  return FlagError("deadline", absl::StrCat(Quote(value),
                                            " is neither an RFC 3339 time "
                                            "(2025-06-01T12:00:00Z) nor a duration (30m, 2h)"));
}

// safetensors: an 8-byte little-endian header length, then a JSON object.
// The coordinator checks the file fully; this catches passing the wrong file.
absl::Status CheckSafetensors(absl::string_view path, absl::string_view bytes) {
  const auto bad = [&](absl::string_view why) {
    return FlagError("weights", absl::StrCat(path, " is not a safetensors file (", why, ")"));
  };
  if (bytes.size() < 9) return bad(absl::StrCat("only ", bytes.size(), " bytes"));
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = header << 8 | static_cast<unsigned char>(bytes[i]);
  if (header > bytes.size() - 8) {
    return bad(
        absl::StrCat("header length ", header, " exceeds the file's ", bytes.size(), " bytes"));
  }
  if (bytes[8] != '{') return bad("header is not a JSON object");
  return absl::OkStatus();
}

class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (error_.empty()) error_ = absl::StrCat(line + 1, ":", column + 1, ": ", message);
  }
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

absl::StatusOr<v1::JobSpec> ReadJobFile(const std::string& path) {
  absl::StatusOr<std::string> text = engine::ReadFileToString(path, kMaxJobFileBytes);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("--job-file: ", text.status().message()));
  }
  v1::JobSpec spec;
  google::protobuf::TextFormat::Parser parser;
  FirstErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(*text, &spec)) {
    return FlagError("job-file", absl::StrCat(path, ":", errors.error()));
  }
  return spec;
}

v1::JobSpec DefaultJobSpec() {
  v1::JobSpec spec;
  spec.mutable_base_model()->set_architecture("mlp");
  spec.set_task("classification");
  v1::HyperParameters* hp = spec.mutable_hyper_parameters();
  hp->set_optimizer(v1::OPTIMIZER_KIND_SGD);
  hp->set_learning_rate(0.05f);
  hp->set_momentum(0.9f);
  hp->set_weight_decay(0.0f);
  hp->set_epochs(5);
  hp->set_batch_size(64);
  hp->set_seed(0);
  spec.mutable_scheme()->set_fit_class_budget(true);
  return spec;
}

absl::Status CheckToken(absl::string_view token, absl::string_view source) {
  for (char c : token) {
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": the token may hold only printable ASCII without spaces"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<GlobalOptions> BuildGlobalOptions(const std::map<std::string, std::string>& flags,
                                                 absl::string_view env_token) {
  GlobalOptions options;
  if (auto it = flags.find("server"); it != flags.end()) {
    if (it->second.empty() || absl::StrContains(it->second, ' ')) {
      return FlagError("server", absl::StrCat("want HOST:PORT, got ", Quote(it->second)));
    }
    options.server = it->second;
  }
  if (auto it = flags.find("token"); it != flags.end()) {
    RETURN_IF_ERROR(CheckToken(it->second, "--token"));
    options.token = it->second;
  } else {
    RETURN_IF_ERROR(CheckToken(env_token, "FLEETTUNE_TOKEN"));
    options.token = std::string(env_token);
  }
  if (auto it = flags.find("json"); it != flags.end()) {
    ASSIGN_OR_RETURN(options.json, ParseBool("json", it->second));
  }
  if (auto it = flags.find("timeout"); it != flags.end()) {
    double seconds = 0;
    absl::Duration d;
    if (absl::SimpleAtod(it->second, &seconds) && std::isfinite(seconds) && seconds > 0) {
      options.timeout = absl::Seconds(seconds);
    } else if (absl::ParseDuration(it->second, &d) && d > absl::ZeroDuration() &&
               d != absl::InfiniteDuration()) {
      options.timeout = d;
    } else {
      return FlagError("timeout",
                       absl::StrCat("want a positive number of seconds, got ", Quote(it->second)));
    }
  }
  return options;
}

absl::StatusOr<std::string> JobIdArg(const CommandLine& line) {
  const std::string& id = line.args.front();  // ParseCommandLine checked there is one
  if (id.empty() || id.size() > 128 || SanitizeForTerminal(id) != id) {
    return absl::InvalidArgumentError(absl::StrCat("bad JOB_ID ", Quote(id)));
  }
  return id;
}

}  // namespace

// ---------------------------------------------------------------------------
// Step 1.

absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args) {
  CommandLine line;
  const CommandInfo* command = nullptr;
  bool flags_ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_ended || arg.size() < 2 || arg[0] != '-') {
      if (command != nullptr) {
        line.args.push_back(arg);
        continue;
      }
      command = FindCommand(arg);
      if (command == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("unknown command ", Quote(arg)));
      }
      if (command->command == Command::kHelp) return CommandLine{};
      line.command = command->command;
      continue;
    }
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") return CommandLine{};
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", Quote(arg)));
    }
    absl::string_view body = absl::string_view(arg).substr(2);
    const size_t eq = body.find('=');
    std::string name = absl::StrReplaceAll(body.substr(0, eq), {{"_", "-"}});
    const FlagInfo* flag = FindFlag(GlobalFlags(), name);
    std::map<std::string, std::string>* into = &line.global_flags;
    if (flag == nullptr && command != nullptr) {
      flag = FindFlag(command->flags, name);
      into = &line.flags;
    }
    if (flag == nullptr) {
      if (command == nullptr) {
        for (const CommandInfo& c : Commands()) {
          if (FindFlag(c.flags, name) != nullptr) {
            return absl::InvalidArgumentError(
                absl::StrCat("--", name, " belongs after the command (", c.name, ")"));
          }
        }
        return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
      }
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " for ", command->name));
    }
    std::string value;
    if (eq != absl::string_view::npos) {
      value = std::string(body.substr(eq + 1));
    } else if (flag->value == nullptr) {
      value = "true";
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
    }
    (*into)[name] = std::move(value);
  }
  if (command == nullptr) return absl::InvalidArgumentError("no command given");
  const size_t wanted = command->arg == nullptr ? 0 : 1;
  if (line.args.size() < wanted) {
    return absl::InvalidArgumentError(absl::StrCat(command->name, " needs ", command->arg));
  }
  if (line.args.size() > wanted) {
    return absl::InvalidArgumentError(
        absl::StrCat(command->name, ": unexpected argument ", Quote(line.args[wanted])));
  }
  return line;
}

std::string Usage() {
  const auto flag_text = [](const FlagInfo& f) {
    return f.value == nullptr ? absl::StrCat("--", f.name)
                              : absl::StrCat("--", f.name, "=", f.value);
  };
  // One width for every group, so all help texts start in the same column.
  size_t width = 0;
  for (const FlagInfo& f : GlobalFlags()) width = std::max(width, flag_text(f).size());
  for (const CommandInfo& c : Commands()) {
    for (const FlagInfo& f : c.flags) width = std::max(width, flag_text(f).size());
  }
  const auto flag_lines = [&](const std::vector<FlagInfo>& flags) {
    std::string out;
    for (const FlagInfo& f : flags) {
      const std::string left = flag_text(f);
      const std::string help = f.help;
      const std::string indent(2 + width + 2, ' ');
      absl::StrAppend(&out, "  ", left, std::string(width - left.size() + 2, ' '),
                      absl::StrReplaceAll(help, {{"\n", "\n" + indent}}), "\n");
    }
    return out;
  };
  std::string out =
      "usage: fleettune [global flags] COMMAND [flags] [JOB_ID]\n"
      "\n"
      "Operates a fleettune coordinator: submits fine-tuning jobs to fleets of edge\n"
      "devices, follows them, and lists devices and device classes.\n"
      "\n"
      "commands:\n";
  for (const CommandInfo& c : Commands()) {
    const std::string left = c.arg == nullptr ? c.name : absl::StrCat(c.name, " ", c.arg);
    absl::StrAppend(&out, "  ", left, std::string(16 - left.size(), ' '), c.summary, "\n");
  }
  absl::StrAppend(&out, "\nglobal flags (before or after the command):\n",
                  flag_lines(GlobalFlags()));
  for (const CommandInfo& c : Commands()) {
    if (c.flags.empty()) continue;
    absl::StrAppend(&out, "\n", c.name, " flags:\n");
    if (c.command == Command::kSubmit) {
      absl::StrAppend(&out,
                      "  (with --job-file, the flags given override the file's fields;\n"
                      "  without it, the flags not given take the defaults below)\n");
    }
    absl::StrAppend(&out, flag_lines(c.flags));
  }
  absl::StrAppend(&out,
                  "\nexamples:\n"
                  "  fleettune submit --name=mnist-ft --dataset=fashion-mnist \\\n"
                  "      --layers=784,256,128,10 --classes=rpi4:2,x86-avx2:1 --deadline=30m\n"
                  "  fleettune watch JOB_ID\n"
                  "  fleettune list --state=running --json\n"
                  "\nexit status: 0 success; 1 a call failed, or the watched job failed or was\n"
                  "cancelled; 2 a bad command line.\n");
  return out;
}

// ---------------------------------------------------------------------------
// Step 2.

absl::StatusOr<std::vector<v1::JobState>> ParseJobStates(absl::string_view text) {
  std::vector<v1::JobState> states;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    v1::JobState state;
    const std::string name = absl::StrCat("JOB_STATE_", absl::AsciiStrToUpper(part));
    if (part.empty() || !v1::JobState_Parse(name, &state) || state == v1::JOB_STATE_UNSPECIFIED) {
      return FlagError("state", absl::StrCat(Quote(part),
                                             " is not pending, running, succeeded, failed "
                                             "or cancelled"));
    }
    if (std::find(states.begin(), states.end(), state) == states.end()) states.push_back(state);
  }
  return states;
}

absl::StatusOr<v1::JobSpec> BuildJobSpec(const std::map<std::string, std::string>& flags,
                                         absl::Time now) {
  const auto flag = [&flags](const char* name) -> const std::string* {
    auto it = flags.find(name);
    return it == flags.end() ? nullptr : &it->second;
  };
  const bool from_file = flag("job-file") != nullptr;
  v1::JobSpec spec;
  if (from_file) {
    ASSIGN_OR_RETURN(spec, ReadJobFile(*flag("job-file")));
  } else {
    spec = DefaultJobSpec();
  }
  v1::ModelSpec* model = spec.mutable_base_model();
  v1::HyperParameters* hp = spec.mutable_hyper_parameters();

  if (const std::string* v = flag("name")) spec.set_name(*v);
  if (const std::string* v = flag("model")) {
    if (!MatchesCharset(*v, "_-", 64, false)) {
      return FlagError("model", absl::StrCat("want an architecture like mlp, got ", Quote(*v)));
    }
    model->set_architecture(*v);
  }
  if (const std::string* v = flag("layers")) {
    ASSIGN_OR_RETURN(std::vector<int64_t> sizes, ParseLayers(*v));
    model->mutable_layer_sizes()->Assign(sizes.begin(), sizes.end());
  }
  if (const std::string* v = flag("weights")) {
    absl::StatusOr<std::string> bytes = engine::ReadFileToString(*v, kMaxWeightsBytes);
    if (!bytes.ok()) {
      return absl::Status(bytes.status().code(),
                          absl::StrCat("--weights: ", bytes.status().message()));
    }
    RETURN_IF_ERROR(CheckSafetensors(*v, *bytes));
    model->set_safetensors_weights(*std::move(bytes));
  }
  if (const std::string* v = flag("dataset")) {
    if (v->empty()) return FlagError("dataset", "must not be empty");
    spec.set_dataset(*v);
  }
  if (const std::string* v = flag("task")) {
    if (v->empty()) return FlagError("task", "must not be empty");
    spec.set_task(*v);
  }
  if (const std::string* v = flag("optimizer")) {
    if (*v == "sgd") {
      hp->set_optimizer(v1::OPTIMIZER_KIND_SGD);
    } else if (*v == "adamw") {
      hp->set_optimizer(v1::OPTIMIZER_KIND_ADAMW);
    } else {
      return FlagError("optimizer", absl::StrCat("want sgd or adamw, got ", Quote(*v)));
    }
  }
  if (const std::string* v = flag("lr")) {
    ASSIGN_OR_RETURN(double lr, ParseNumber("lr", *v));
    if (lr <= 0) return FlagError("lr", absl::StrCat("must be > 0, got ", Quote(*v)));
    hp->set_learning_rate(static_cast<float>(lr));
  }
  if (const std::string* v = flag("momentum")) {
    ASSIGN_OR_RETURN(double m, ParseNumber("momentum", *v));
    if (m < 0 || m >= 1)
      return FlagError("momentum", absl::StrCat("must be in [0, 1), got ", Quote(*v)));
    hp->set_momentum(static_cast<float>(m));
  }
  if (const std::string* v = flag("weight-decay")) {
    ASSIGN_OR_RETURN(double wd, ParseNumber("weight-decay", *v));
    if (wd < 0) return FlagError("weight-decay", absl::StrCat("must be >= 0, got ", Quote(*v)));
    hp->set_weight_decay(static_cast<float>(wd));
  }
  if (const std::string* v = flag("epochs")) {
    ASSIGN_OR_RETURN(int32_t epochs, ParsePositiveInt("epochs", *v));
    hp->set_epochs(epochs);
  }
  if (const std::string* v = flag("batch")) {
    ASSIGN_OR_RETURN(int32_t batch, ParsePositiveInt("batch", *v));
    hp->set_batch_size(batch);
  }
  if (const std::string* v = flag("micro-batches")) {
    if (*v == "fit") {
      hp->set_micro_batches(0);
      hp->set_fit_micro_batches(true);
    } else {
      ASSIGN_OR_RETURN(int32_t slices, ParsePositiveInt("micro-batches", *v));
      if (hp->batch_size() % slices != 0) {
        return FlagError("micro-batches", absl::StrCat("must be fit or divide --batch (",
                                                       hp->batch_size(), "), got ", Quote(*v)));
      }
      hp->set_micro_batches(slices);
      hp->set_fit_micro_batches(false);
    }
  }
  if (const std::string* v = flag("seed")) {
    uint64_t seed = 0;
    if (absl::StartsWith(*v, "-") || !absl::SimpleAtoi(*v, &seed)) {
      return FlagError("seed", absl::StrCat("must be an integer >= 0, got ", Quote(*v)));
    }
    hp->set_seed(seed);
    model->set_init_seed(seed);
  }
  if (const std::string* v = flag("scheme")) {
    ASSIGN_OR_RETURN(*spec.mutable_scheme(), ParseScheme(*v));
  }
  if (const std::string* v = flag("profile")) {
    if (spec.scheme().kind_case() != v1::SchemeSpec::kFitClassBudget) {
      return FlagError("profile", "needs --scheme=fit (the per-class search)");
    }
    auto profile = engine::search::ReadProfile(*v);
    if (!profile.ok()) return FlagError("profile", std::string(profile.status().message()));
    *spec.mutable_scheme()->mutable_contribution_profile() = engine::plan::ProfileToProto(*profile);
  }
  if (const std::string* v = flag("classes")) {
    ASSIGN_OR_RETURN(std::vector<v1::ClassTarget> targets, ParseClasses(*v));
    spec.mutable_targets()->Clear();
    for (v1::ClassTarget& t : targets) *spec.add_targets() = std::move(t);
  }
  if (const std::string* v = flag("min-devices")) {
    ASSIGN_OR_RETURN(int32_t n, ParsePositiveInt("min-devices", *v, /*min=*/0));
    spec.mutable_completion()->set_min_devices(n);
  }
  if (const std::string* v = flag("deadline")) {
    ASSIGN_OR_RETURN(absl::Time deadline, ParseDeadline(*v, now));
    SetTimestamp(deadline, spec.mutable_completion()->mutable_deadline());
  }

  // Momentum means nothing to AdamW: drop a default or file value, reject a flag.
  if (hp->optimizer() == v1::OPTIMIZER_KIND_ADAMW) {
    if (flag("momentum") != nullptr) {
      return FlagError("momentum", "applies only to --optimizer=sgd");
    }
    hp->set_momentum(0);
  }

  // What the spec needs, wherever it came from.
  const char* file_hint = from_file ? " (or set it in --job-file)" : "";
  if (spec.name().empty()) return Required("name", file_hint);
  if (!IsJobName(spec.name())) {
    return FlagError("name", absl::StrCat(Quote(spec.name()), " must match [A-Za-z0-9._-]{1,64}"));
  }
  if (spec.dataset().empty()) return Required("dataset", file_hint);
  if (spec.targets().empty()) {
    return Required("classes", absl::StrCat(file_hint, ", e.g. --classes=rpi4:2,x86-avx2:1"));
  }
  if (model->architecture() == "mlp" && model->registered_model().empty() &&
      model->layer_sizes().empty()) {
    return Required("layers", absl::StrCat(" for --model=mlp", file_hint));
  }
  int64_t wanted = 0;
  for (const v1::ClassTarget& t : spec.targets()) wanted += t.devices();
  if (spec.completion().min_devices() > wanted) {
    return FlagError("min-devices",
                     absl::StrCat(spec.completion().min_devices(), " is more than the ", wanted,
                                  " devices --classes asks for"));
  }
  return spec;
}

absl::StatusOr<Invocation> BuildInvocation(const CommandLine& line, absl::string_view env_token,
                                           absl::Time now) {
  Invocation invocation;
  invocation.command = line.command;
  ASSIGN_OR_RETURN(invocation.global, BuildGlobalOptions(line.global_flags, env_token));
  switch (line.command) {
    case Command::kSubmit: {
      ASSIGN_OR_RETURN(invocation.spec, BuildJobSpec(line.flags, now));
      break;
    }
    case Command::kList: {
      if (auto it = line.flags.find("state"); it != line.flags.end()) {
        ASSIGN_OR_RETURN(invocation.states, ParseJobStates(it->second));
      }
      break;
    }
    case Command::kGet:
    case Command::kWatch:
    case Command::kCancel: {
      ASSIGN_OR_RETURN(invocation.job_id, JobIdArg(line));
      break;
    }
    case Command::kDevices: {
      if (auto it = line.flags.find("class"); it != line.flags.end()) {
        if (!IsClassName(it->second)) {
          return FlagError("class", absl::StrCat(Quote(it->second), " must match [a-z0-9-]{1,64}"));
        }
        invocation.device_class = it->second;
      }
      break;
    }
    case Command::kCompile:
      invocation.compile_flags = line.flags;
      break;
    case Command::kSearch:
      invocation.search_flags = line.flags;
      break;
    case Command::kClasses:
    case Command::kHelp:
      break;
  }
  return invocation;
}

// ---------------------------------------------------------------------------
// Step 3.

absl::Status FromGrpcStatus(const grpc::Status& status, const GlobalOptions& options) {
  if (status.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  std::string message =
      absl::StrCat(absl::StatusCodeToString(code), ": ",
                   status.error_message().empty() ? std::string("(no message)")
                                                  : SanitizeForTerminal(status.error_message()));
  switch (code) {
    case absl::StatusCode::kUnauthenticated:
      if (!absl::StrContains(message, "FLEETTUNE_TOKEN")) {
        absl::StrAppend(&message, " (set --token or FLEETTUNE_TOKEN)");
      }
      break;
    case absl::StatusCode::kUnavailable:
      absl::StrAppend(&message, " (coordinator at ", options.server, ")");
      break;
    case absl::StatusCode::kDeadlineExceeded:
      absl::StrAppend(&message, " (--timeout=", absl::FormatDuration(options.timeout), ")");
      break;
    default:
      break;
  }
  return absl::Status(code, message);
}

Cli::Cli(v1::FleetService::StubInterface* stub, CliOptions options, std::ostream* out,
         std::ostream* err)
    : stub_(stub), options_(std::move(options)), out_(out), err_(err) {}

absl::Status Cli::Run(const Invocation& invocation) {
  switch (invocation.command) {
    case Command::kSubmit:
      return Submit(invocation.spec);
    case Command::kList:
      return List(invocation.states);
    case Command::kGet:
      return Get(invocation.job_id);
    case Command::kWatch:
      return Watch(invocation.job_id);
    case Command::kCancel:
      return Cancel(invocation.job_id);
    case Command::kDevices:
      return Devices(invocation.device_class);
    case Command::kClasses:
      return Classes();
    case Command::kCompile:
      return RunCompile(invocation.compile_flags, options_.global.json, out_);
    case Command::kSearch:
      return RunSearch(invocation.search_flags, options_.global.json, out_);
    case Command::kHelp:
      *out_ << Usage();
      return absl::OkStatus();
  }
  return absl::InternalError("unhandled command");
}

void Cli::PrepareContext(grpc::ClientContext* context, bool unary) const {
  if (!options_.global.token.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.global.token));
  }
  if (unary) context->set_deadline(absl::ToChronoTime(absl::Now() + options_.global.timeout));
}

absl::Status Cli::PrintJson(const google::protobuf::Message& message) {
  ASSIGN_OR_RETURN(std::string json, FormatJson(message));
  *out_ << json << "\n";
  out_->flush();
  return absl::OkStatus();
}

absl::Status Cli::Submit(const v1::JobSpec& spec) {
  v1::CreateJobRequest request;
  *request.mutable_spec() = spec;
  v1::CreateJobResponse response;
  grpc::ClientContext context;
  PrepareContext(&context, /*unary=*/true);
  RETURN_IF_ERROR(FromGrpcStatus(stub_->CreateJob(&context, request, &response), options_.global));
  if (options_.global.json) return PrintJson(response);
  *out_ << FormatJob(response.job(), options_.clock());
  *err_ << "follow it with: fleettune watch " << SanitizeForTerminal(response.job().job_id())
        << "\n";
  return absl::OkStatus();
}

absl::Status Cli::List(const std::vector<v1::JobState>& states) {
  v1::ListJobsRequest request;
  for (v1::JobState s : states) request.add_states(s);
  v1::ListJobsResponse response;
  grpc::ClientContext context;
  PrepareContext(&context, /*unary=*/true);
  RETURN_IF_ERROR(FromGrpcStatus(stub_->ListJobs(&context, request, &response), options_.global));
  if (options_.global.json) return PrintJson(response);
  *out_ << FormatJobList(response.jobs(), options_.clock());
  return absl::OkStatus();
}

absl::Status Cli::Get(const std::string& job_id) {
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  v1::GetJobResponse response;
  grpc::ClientContext context;
  PrepareContext(&context, /*unary=*/true);
  RETURN_IF_ERROR(FromGrpcStatus(stub_->GetJob(&context, request, &response), options_.global));
  if (options_.global.json) return PrintJson(response);
  *out_ << FormatJob(response.job(), options_.clock());
  return absl::OkStatus();
}

void Cli::DrawWatchFrame(const v1::Job& job, int* lines_on_screen) {
  const std::string frame = FormatWatchFrame(job, options_.clock());
  if (!options_.redraw_in_place) {
    // Frames follow each other, a blank line apart; nothing is overwritten.
    if (*lines_on_screen > 0) *out_ << "\n";
    *out_ << frame;
    *lines_on_screen = 1;
    out_->flush();
    return;
  }
  // Up to the first line of the previous frame, then clear to the end of the screen.
  if (*lines_on_screen > 0) *out_ << "\x1b[" << *lines_on_screen << "A\r\x1b[J";
  *out_ << frame;
  out_->flush();
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(frame, '\n', absl::SkipEmpty())) {
    const int width = DisplayWidth(line);
    const int columns = options_.terminal_columns;
    lines += columns > 0 && width > columns ? (width + columns - 1) / columns : 1;
  }
  *lines_on_screen = lines;
}

absl::Status Cli::Watch(const std::string& job_id) {
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  grpc::ClientContext context;
  PrepareContext(&context, /*unary=*/false);
  std::unique_ptr<grpc::ClientReaderInterface<v1::WatchJobResponse>> reader =
      stub_->WatchJob(&context, request);
  v1::WatchJobResponse response;
  v1::Job job;
  bool got_update = false;
  bool ended = false;
  int lines_on_screen = 0;
  while (reader->Read(&response)) {
    got_update = true;
    job = response.job();
    if (options_.global.json) {
      RETURN_IF_ERROR(PrintJson(response));
    } else {
      DrawWatchFrame(job, &lines_on_screen);
    }
    ended = job.state() == v1::JOB_STATE_SUCCEEDED || job.state() == v1::JOB_STATE_FAILED ||
            job.state() == v1::JOB_STATE_CANCELLED;
    if (ended) {
      // Do not wait for the coordinator to close the stream.
      context.TryCancel();
      break;
    }
  }
  const grpc::Status finished = reader->Finish();
  if (!ended) {
    RETURN_IF_ERROR(FromGrpcStatus(finished, options_.global));
    return absl::UnavailableError(
        absl::StrCat("the coordinator ended the watch of job ", job_id,
                     got_update ? absl::StrCat(" while it was ", JobStateName(job.state()))
                                : " before any update",
                     "; run `fleettune watch ", job_id, "` again"));
  }
  const std::string detail =
      job.state_detail().empty() ? "" : absl::StrCat(": ", SanitizeForTerminal(job.state_detail()));
  switch (job.state()) {
    case v1::JOB_STATE_SUCCEEDED:
      return absl::OkStatus();
    case v1::JOB_STATE_FAILED:
      return absl::AbortedError(absl::StrCat("job ", job_id, " failed", detail));
    default:
      return absl::CancelledError(absl::StrCat("job ", job_id, " was cancelled", detail));
  }
}

absl::Status Cli::Cancel(const std::string& job_id) {
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  v1::CancelJobResponse response;
  grpc::ClientContext context;
  PrepareContext(&context, /*unary=*/true);
  RETURN_IF_ERROR(FromGrpcStatus(stub_->CancelJob(&context, request, &response), options_.global));
  if (options_.global.json) return PrintJson(response);
  *out_ << FormatJobHeadline(response.job(), options_.clock()) << "\n";
  return absl::OkStatus();
}

absl::Status Cli::Devices(const std::string& device_class) {
  v1::ListDevicesRequest request;
  request.set_device_class(device_class);
  v1::ListDevicesResponse response;
  grpc::ClientContext context;
  PrepareContext(&context, /*unary=*/true);
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->ListDevices(&context, request, &response), options_.global));
  if (options_.global.json) return PrintJson(response);
  *out_ << FormatDeviceList(response.devices(), options_.clock());
  return absl::OkStatus();
}

absl::Status Cli::Classes() {
  v1::ListDeviceClassesRequest request;
  v1::ListDeviceClassesResponse response;
  grpc::ClientContext context;
  PrepareContext(&context, /*unary=*/true);
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->ListDeviceClasses(&context, request, &response), options_.global));
  if (options_.global.json) return PrintJson(response);
  *out_ << FormatClassList(response.classes());
  return absl::OkStatus();
}

}  // namespace fleettune::cli
