#include "cli/format.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

namespace fleettune::cli {
namespace {

constexpr absl::string_view kNone = "-";

using KeyValues = std::vector<std::pair<std::string, std::string>>;

// Keys in one column, values aligned after them.
std::string RenderKeyValues(const KeyValues& pairs) {
  int width = 0;
  for (const auto& [key, value] : pairs) width = std::max(width, DisplayWidth(key));
  std::string out;
  for (const auto& [key, value] : pairs) {
    absl::StrAppend(&out, key, std::string(width - DisplayWidth(key) + 2, ' '),
                    SanitizeForTerminal(value), "\n");
  }
  return out;
}

// A metric the coordinator reports as 0 until an assignment of the class completed.
bool Measured(const v1::ClassProgress& p, double value) {
  return p.completed() > 0 && value != 0 && std::isfinite(value);
}

std::string FormatMsPerStep(double ms) {
  return ms < 10 ? absl::StrFormat("%.2f", ms) : absl::StrFormat("%.1f", ms);
}

std::string FormatAccuracy(const v1::ClassProgress& p) {
  const bool before = Measured(p, p.accuracy_before());
  const bool after = Measured(p, p.accuracy_after());
  if (!before && !after) return std::string(kNone);
  return absl::StrCat(before ? FormatPercent(p.accuracy_before()) : kNone, " -> ",
                      after ? FormatPercent(p.accuracy_after()) : kNone);
}

// Time since `t`: "5m12s"; "-" when unset.
std::string Age(const google::protobuf::Timestamp& t, absl::Time now) {
  if (t.seconds() == 0 && t.nanos() == 0) return std::string(kNone);
  return FormatShortDuration(now - ToTime(t));
}

// "5m12s ago"; "-" when unset.
std::string FormatAge(const google::protobuf::Timestamp& t, absl::Time now) {
  if (t.seconds() == 0 && t.nanos() == 0) return std::string(kNone);
  return absl::StrCat(Age(t, now), " ago");
}

struct DeviceCounts {
  int64_t wanted = 0;
  int64_t completed = 0;
  int64_t failed = 0;
  int64_t lost = 0;
};

DeviceCounts CountDevices(const v1::Job& job) {
  DeviceCounts c;
  for (const v1::ClassProgress& p : job.progress()) {
    c.wanted += p.wanted();
    c.completed += p.completed();
    c.failed += p.failed();
    c.lost += p.lost();
  }
  if (job.progress().empty()) {
    for (const v1::ClassTarget& t : job.spec().targets()) c.wanted += t.devices();
  }
  return c;
}

std::string FormatModel(const v1::ModelSpec& model) {
  if (!model.registered_model().empty()) return model.registered_model();
  std::string text = model.architecture().empty() ? std::string(kNone) : model.architecture();
  if (!model.layer_sizes().empty())
    absl::StrAppend(&text, " ", absl::StrJoin(model.layer_sizes(), "-"));
  return text;
}

std::string FormatTargets(const v1::JobSpec& spec) {
  if (spec.targets().empty()) return std::string(kNone);
  std::vector<std::string> parts;
  for (const v1::ClassTarget& t : spec.targets()) {
    parts.push_back(absl::StrCat(t.device_class(), ":", t.devices()));
  }
  return absl::StrJoin(parts, " ");
}

std::string FormatDeadline(const google::protobuf::Timestamp& deadline, absl::Time now) {
  const absl::Time t = ToTime(deadline);
  if (t >= now) return absl::StrCat("in ", FormatShortDuration(t - now));
  return absl::StrCat("passed ", FormatShortDuration(now - t), " ago");
}

std::string FormatCompletion(const v1::JobSpec& spec, absl::Time now) {
  const v1::CompletionPolicy& c = spec.completion();
  std::string text = c.min_devices() > 0
                         ? absl::StrCat("succeeds when ", c.min_devices(), " devices completed")
                         : "succeeds when every enlisted device completed";
  if (c.has_deadline()) {
    absl::StrAppend(&text, ", deadline ", FormatTimestamp(c.deadline()), " (",
                    FormatDeadline(c.deadline(), now), ")");
  }
  return text;
}

}  // namespace

std::string FormatBytes(int64_t bytes) {
  if (bytes < 0) return std::string(kNone);
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024;
  int unit = 0;
  // 1023.95 would print as "1024.0"; move up a unit instead.
  while (value >= 1023.95 && unit + 1 < static_cast<int>(std::size(kUnits))) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

std::string FormatPercent(double fraction) {
  if (!std::isfinite(fraction)) return std::string(kNone);
  return absl::StrFormat("%.1f%%", fraction * 100);
}

std::string FormatRatio(double ratio) {
  if (!std::isfinite(ratio)) return std::string(kNone);
  return absl::StrFormat("%.2fx", ratio);
}

std::string FormatCount(int64_t n) {
  // Work on the magnitude as unsigned so INT64_MIN does not overflow.
  uint64_t magnitude = n < 0 ? ~static_cast<uint64_t>(n) + 1 : static_cast<uint64_t>(n);
  std::string digits = absl::StrCat(magnitude);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return n < 0 ? absl::StrCat("-", out) : out;
}

std::string FormatShortDuration(absl::Duration d) {
  if (d == absl::InfiniteDuration() || d == -absl::InfiniteDuration()) return std::string(kNone);
  const int64_t s = absl::ToInt64Seconds(absl::AbsDuration(d));
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, s % 86400 / 3600);
}

std::string FormatTimestamp(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return std::string(kNone);
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", ToTime(t), absl::UTCTimeZone());
}

absl::Time ToTime(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return absl::InfinitePast();
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

std::string JobStateName(v1::JobState state) {
  const std::string& name = v1::JobState_Name(state);
  if (!absl::StartsWith(name, "JOB_STATE_")) return absl::StrCat("state ", state);
  return absl::AsciiStrToLower(name.substr(std::string("JOB_STATE_").size()));
}

std::string DeviceStateName(v1::DeviceState state) {
  const std::string& name = v1::DeviceState_Name(state);
  if (!absl::StartsWith(name, "DEVICE_STATE_")) return absl::StrCat("state ", state);
  return absl::AsciiStrToLower(name.substr(std::string("DEVICE_STATE_").size()));
}

std::string SchemeName(const v1::SchemeSpec& scheme) {
  switch (scheme.kind_case()) {
    case v1::SchemeSpec::kPreset:
      return scheme.preset();
    case v1::SchemeSpec::kFitClassBudget:
      return scheme.fit_class_budget() ? "fit" : std::string(kNone);
    case v1::SchemeSpec::kScheme:
      // An explicit per-tensor scheme: shown by its label (operator-chosen text, sanitized by
      // the table printer like every other field).
      return scheme.scheme().name().empty() ? "custom" : scheme.scheme().name();
    case v1::SchemeSpec::KIND_NOT_SET:
      break;
  }
  return std::string(kNone);
}

std::string SanitizeForTerminal(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      out.push_back('?');
    } else if (c == 0xc2 && i + 1 < text.size() &&
               static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(text[i + 1]) <= 0x9f) {
      // U+0080..U+009F: C1 controls, which some terminals obey (CSI is U+009B).
      out.push_back('?');
      ++i;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

int DisplayWidth(absl::string_view text) {
  int width = 0;
  for (char c : text) {
    if ((static_cast<unsigned char>(c) & 0xc0) != 0x80) ++width;
  }
  return width;
}

std::string RenderTable(const std::vector<Column>& columns,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::vector<std::string>> cells;
  cells.reserve(rows.size() + 1);
  std::vector<std::string> header;
  for (const Column& c : columns) header.push_back(c.title);
  cells.push_back(std::move(header));
  for (const auto& row : rows) {
    std::vector<std::string> line(columns.size());
    for (size_t i = 0; i < columns.size() && i < row.size(); ++i) {
      line[i] = SanitizeForTerminal(row[i]);
    }
    cells.push_back(std::move(line));
  }
  std::vector<int> widths(columns.size(), 0);
  for (const auto& line : cells) {
    for (size_t i = 0; i < line.size(); ++i) {
      widths[i] = std::max(widths[i], DisplayWidth(line[i]));
    }
  }
  std::string out;
  for (const auto& line : cells) {
    std::string text;
    for (size_t i = 0; i < line.size(); ++i) {
      const std::string pad(widths[i] - DisplayWidth(line[i]), ' ');
      if (i > 0) text += "  ";
      if (columns[i].align == Align::kRight) {
        absl::StrAppend(&text, pad, line[i]);
      } else {
        absl::StrAppend(&text, line[i], pad);
      }
    }
    text.erase(text.find_last_not_of(' ') + 1);
    absl::StrAppend(&out, text, "\n");
  }
  return out;
}

std::string FormatJobList(const google::protobuf::RepeatedPtrField<v1::Job>& jobs, absl::Time now) {
  if (jobs.empty()) return "no jobs\n";
  std::vector<std::vector<std::string>> rows;
  for (const v1::Job& job : jobs) {
    const DeviceCounts c = CountDevices(job);
    rows.push_back({job.job_id(), job.spec().name(), JobStateName(job.state()),
                    SchemeName(job.spec().scheme()), absl::StrCat(c.completed, "/", c.wanted),
                    Age(job.created_at(), now)});
  }
  return RenderTable({{"ID"},
                      {"NAME"},
                      {"STATE"},
                      {"SCHEME"},
                      {"COMPLETED", Align::kRight},
                      {"AGE", Align::kRight}},
                     rows);
}

std::string FormatJob(const v1::Job& job, absl::Time now) {
  const v1::JobSpec& spec = job.spec();
  const v1::HyperParameters& hp = spec.hyper_parameters();
  KeyValues kv;
  kv.emplace_back("job", job.job_id());
  kv.emplace_back("name", spec.name());
  kv.emplace_back("state", JobStateName(job.state()));
  if (!job.state_detail().empty()) kv.emplace_back("detail", job.state_detail());
  kv.emplace_back("created", absl::StrCat(FormatTimestamp(job.created_at()), " (",
                                          FormatAge(job.created_at(), now), ")"));
  kv.emplace_back("updated", FormatTimestamp(job.updated_at()));
  kv.emplace_back("model", FormatModel(spec.base_model()));
  kv.emplace_back("weights", job.base_weights_digest().empty()
                                 ? absl::StrCat("seeded initialization (seed ",
                                                spec.base_model().init_seed(), ")")
                                 : absl::StrCat("sha256:", job.base_weights_digest()));
  kv.emplace_back("dataset", absl::StrCat(spec.dataset(), " (", spec.task(), ")"));
  std::string optimizer = hp.optimizer() == v1::OPTIMIZER_KIND_ADAMW ? "adamw"
                          : hp.optimizer() == v1::OPTIMIZER_KIND_SGD ? "sgd"
                                                                     : std::string(kNone);
  absl::StrAppend(&optimizer, absl::StrFormat(" lr=%g", hp.learning_rate()));
  if (hp.optimizer() != v1::OPTIMIZER_KIND_ADAMW) {
    absl::StrAppend(&optimizer, absl::StrFormat(" momentum=%g", hp.momentum()));
  }
  absl::StrAppend(&optimizer, absl::StrFormat(" weight-decay=%g", hp.weight_decay()));
  kv.emplace_back("optimizer", optimizer);
  kv.emplace_back("training", absl::StrCat("epochs=", hp.epochs(), " batch=", hp.batch_size(),
                                           " seed=", hp.seed()));
  kv.emplace_back("scheme", SchemeName(spec.scheme()));
  kv.emplace_back("targets", FormatTargets(spec));
  kv.emplace_back("completion", FormatCompletion(spec, now));

  std::string out = RenderKeyValues(kv);
  absl::StrAppend(&out, "\nplans\n", FormatPlanTable(job));
  absl::StrAppend(&out, "\nprogress\n", FormatProgressTable(job));
  return out;
}

std::string FormatJobHeadline(const v1::Job& job, absl::Time now) {
  const DeviceCounts c = CountDevices(job);
  std::string line =
      absl::StrCat("job ", job.job_id(), " (", job.spec().name(), "): ", JobStateName(job.state()),
                   ", ", c.completed, "/", c.wanted, " devices completed");
  const v1::CompletionPolicy& policy = job.spec().completion();
  if (policy.min_devices() > 0) absl::StrAppend(&line, " (", policy.min_devices(), " needed)");
  if (c.failed > 0) absl::StrAppend(&line, ", ", c.failed, " failed");
  if (c.lost > 0) absl::StrAppend(&line, ", ", c.lost, " lost");
  if (policy.has_deadline()) {
    absl::StrAppend(&line, ", deadline ", FormatDeadline(policy.deadline(), now));
  }
  return SanitizeForTerminal(line);
}

std::string FormatPlanTable(const v1::Job& job) {
  if (job.progress().empty()) return "no plans yet\n";
  std::vector<std::vector<std::string>> rows;
  for (const v1::ClassProgress& p : job.progress()) {
    if (!p.has_plan()) {
      rows.push_back({p.device_class(), std::string(kNone)});
      continue;
    }
    const v1::PlanSummary& plan = p.plan();
    const auto bytes = [](uint64_t b) {
      return FormatBytes(static_cast<int64_t>(std::min<uint64_t>(b, INT64_MAX)));
    };
    // A micro-batched plan runs each step in slices of the batch.
    const std::string scheme =
        plan.micro_batches() > 1
            ? absl::StrCat(plan.scheme(), " (", plan.micro_batches(), " slices)")
            : plan.scheme();
    rows.push_back({p.device_class(), scheme, FormatCount(plan.trainable_parameters()),
                    bytes(plan.arena_bytes()), bytes(plan.weight_bytes()),
                    bytes(plan.optimizer_state_bytes()), bytes(plan.total_bytes()),
                    bytes(plan.budget_bytes()), bytes(plan.dense_total_bytes()),
                    plan.plan_digest().substr(0, 12)});
  }
  return RenderTable({{"CLASS"},
                      {"SCHEME"},
                      {"TRAINABLE", Align::kRight},
                      {"ARENA", Align::kRight},
                      {"WEIGHTS", Align::kRight},
                      {"OPT STATE", Align::kRight},
                      {"TOTAL", Align::kRight},
                      {"BUDGET", Align::kRight},
                      {"DENSE", Align::kRight},
                      {"PLAN"}},
                     rows);
}

std::string FormatProgressTable(const v1::Job& job) {
  if (job.progress().empty()) return "no device classes yet\n";
  std::vector<std::vector<std::string>> rows;
  for (const v1::ClassProgress& p : job.progress()) {
    const auto metric = [&p](double value, std::string text) {
      return Measured(p, value) ? text : std::string(kNone);
    };
    rows.push_back({
        p.device_class(),
        p.has_plan() && !p.plan().scheme().empty() ? p.plan().scheme() : std::string(kNone),
        absl::StrCat(p.wanted()),
        absl::StrCat(p.assigned()),
        absl::StrCat(p.running()),
        absl::StrCat(p.completed()),
        absl::StrCat(p.failed()),
        absl::StrCat(p.lost()),
        metric(p.ms_per_step(), FormatMsPerStep(p.ms_per_step())),
        metric(p.speedup_vs_dense(), FormatRatio(p.speedup_vs_dense())),
        metric(p.memory_saving_vs_dense(), FormatRatio(p.memory_saving_vs_dense())),
        metric(static_cast<double>(p.peak_memory_bytes()), FormatBytes(p.peak_memory_bytes())),
        FormatAccuracy(p),
    });
  }
  return RenderTable({{"CLASS"},
                      {"SCHEME"},
                      {"WANTED", Align::kRight},
                      {"ASSIGNED", Align::kRight},
                      {"RUNNING", Align::kRight},
                      {"COMPLETED", Align::kRight},
                      {"FAILED", Align::kRight},
                      {"LOST", Align::kRight},
                      {"MS/STEP", Align::kRight},
                      {"SPEEDUP", Align::kRight},
                      {"MEM SAVING", Align::kRight},
                      {"PEAK MEM", Align::kRight},
                      {"ACCURACY"}},
                     rows);
}

std::string FormatWatchFrame(const v1::Job& job, absl::Time now) {
  std::string out = absl::StrCat(FormatJobHeadline(job, now), "\n");
  if (!job.state_detail().empty()) {
    absl::StrAppend(&out, "detail: ", SanitizeForTerminal(job.state_detail()), "\n");
  }
  absl::StrAppend(&out, FormatProgressTable(job));
  return out;
}

std::string FormatDeviceList(const google::protobuf::RepeatedPtrField<v1::Device>& devices,
                             absl::Time now) {
  if (devices.empty()) return "no devices\n";
  std::vector<std::vector<std::string>> rows;
  for (const v1::Device& d : devices) {
    const v1::DeviceProfile& profile = d.profile();
    rows.push_back({d.device_id(), d.device_class(), DeviceStateName(d.state()), profile.arch(),
                    absl::StrCat(profile.cores()), FormatBytes(profile.memory_bytes()),
                    profile.accelerator().empty() ? std::string(kNone) : profile.accelerator(),
                    FormatAge(d.last_heartbeat(), now),
                    d.assignment_id().empty() ? std::string(kNone) : d.assignment_id()});
  }
  return RenderTable({{"ID"},
                      {"CLASS"},
                      {"STATE"},
                      {"ARCH"},
                      {"CORES", Align::kRight},
                      {"MEMORY", Align::kRight},
                      {"ACCELERATOR"},
                      {"HEARTBEAT", Align::kRight},
                      {"ASSIGNMENT"}},
                     rows);
}

std::string FormatClassList(const google::protobuf::RepeatedPtrField<v1::DeviceClass>& classes) {
  if (classes.empty()) return "no device classes\n";
  std::vector<std::vector<std::string>> rows;
  for (const v1::DeviceClass& c : classes) {
    rows.push_back(
        {c.name(), c.arch(),
         c.required_isa().empty() ? std::string(kNone) : absl::StrJoin(c.required_isa(), ","),
         c.accelerator().empty() ? std::string(kNone) : c.accelerator(),
         FormatBytes(c.min_memory_bytes()), FormatBytes(c.training_memory_budget_bytes()),
         absl::StrCat(c.threads()), absl::StrCat(c.priority()), c.description()});
  }
  return RenderTable({{"NAME"},
                      {"ARCH"},
                      {"ISA"},
                      {"ACCELERATOR"},
                      {"MIN MEMORY", Align::kRight},
                      {"BUDGET", Align::kRight},
                      {"THREADS", Align::kRight},
                      {"PRIORITY", Align::kRight},
                      {"DESCRIPTION"}},
                     rows);
}

absl::StatusOr<std::string> FormatJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.always_print_primitive_fields = true;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot print ", message.GetTypeName(), " as JSON: ", status.ToString()));
  }
  return json;
}

}  // namespace fleettune::cli
