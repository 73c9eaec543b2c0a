#include "server/coordinator/coordinator.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/status_macros.h"
#include "server/base/ids.h"
#include "server/base/sha256.h"

namespace fleettune::server {
namespace {

constexpr size_t kMaxProfileString = 256;
constexpr int kMaxIsaFeatures = 128;
constexpr int kMaxLossPoints = 256;
constexpr size_t kMaxFailureDetail = 512;

bool Active(v1::AssignmentState s) {
  return s == v1::ASSIGNMENT_STATE_ASSIGNED || s == v1::ASSIGNMENT_STATE_RUNNING;
}

bool Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

absl::Status ValidateProfile(const v1::DeviceProfile& p) {
  if (p.arch().empty()) return absl::InvalidArgumentError("profile.arch is empty");
  for (const std::string* s : {&p.arch(), &p.accelerator(), &p.board(), &p.class_override()}) {
    if (s->size() > kMaxProfileString) {
      return absl::InvalidArgumentError(
          absl::StrCat("profile field longer than ", kMaxProfileString, " bytes"));
    }
  }
  if (p.isa_features_size() > kMaxIsaFeatures) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile lists more than ", kMaxIsaFeatures, " ISA features"));
  }
  for (const std::string& f : p.isa_features()) {
    if (f.size() > 64) return absl::InvalidArgumentError("ISA feature name longer than 64 bytes");
  }
  if (p.cores() < 0 || p.memory_bytes() < 0) {
    return absl::InvalidArgumentError("profile.cores and profile.memory_bytes must be >= 0");
  }
  return absl::OkStatus();
}

absl::Status ValidateReport(const v1::MetricsReport& r) {
  if (r.loss_curve_size() > kMaxLossPoints) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss_curve has ", r.loss_curve_size(), " points, at most ", kMaxLossPoints));
  }
  for (double v : {r.ms_per_step(), r.accuracy_before(), r.accuracy_after(), r.speedup_vs_dense(),
                   r.memory_saving_vs_dense()}) {
    if (!std::isfinite(v) || v < 0) {
      return absl::InvalidArgumentError("metrics must be finite and non-negative");
    }
  }
  for (const auto& p : r.loss_curve()) {
    if (!std::isfinite(p.loss()))
      return absl::InvalidArgumentError("loss_curve has a non-finite loss");
  }
  if (r.accuracy_before() > 1 || r.accuracy_after() > 1) {
    return absl::InvalidArgumentError("accuracies are fractions in [0, 1]");
  }
  if (r.sequence() <= 0) return absl::InvalidArgumentError("report.sequence must be >= 1");
  return absl::OkStatus();
}

absl::Status ValidateSpec(const v1::JobSpec& spec, const DeviceClassRegistry& classes,
                          uint64_t max_weights_bytes) {
  if (!ValidName(spec.name())) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.name '", spec.name(), "' must match [A-Za-z0-9._-]{1,64}"));
  }
  if (spec.task() != "classification") {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.task '", spec.task(), "' is not supported (use classification)"));
  }
  if (!ValidName(spec.dataset())) {
    return absl::InvalidArgumentError(
        "spec.dataset must name the local dataset agents use ([A-Za-z0-9._-]{1,64})");
  }
  if (spec.base_model().safetensors_weights().size() > max_weights_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.base_model.safetensors_weights is ", spec.base_model().safetensors_weights().size(),
        " bytes, over the limit of ", max_weights_bytes));
  }
  if (!spec.base_model().registered_model().empty()) {
    return absl::UnimplementedError("registered models are not supported yet; upload weights");
  }
  if (spec.targets().empty()) {
    return absl::InvalidArgumentError("spec.targets is empty: name at least one device class");
  }
  std::set<std::string> seen;
  int64_t wanted = 0;
  for (const auto& t : spec.targets()) {
    RETURN_IF_ERROR(classes.Find(t.device_class()).status());
    if (!seen.insert(t.device_class()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.targets names class '", t.device_class(), "' twice"));
    }
    if (t.devices() < 1 || t.devices() > 100000) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.targets[", t.device_class(), "].devices must be in [1, 100000]"));
    }
    wanted += t.devices();
  }
  if (spec.completion().min_devices() < 0 || spec.completion().min_devices() > wanted) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.completion.min_devices must be in [0, ", wanted, "] (devices wanted)"));
  }
  return absl::OkStatus();
}

}  // namespace

Coordinator::Coordinator(Store* store, const DeviceClassRegistry* classes, PlanCompiler* compiler,
                         CoordinatorOptions options)
    : store_(store), classes_(classes), compiler_(compiler), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(Store* store,
                                                                 const DeviceClassRegistry* classes,
                                                                 PlanCompiler* compiler,
                                                                 CoordinatorOptions options) {
  std::unique_ptr<Coordinator> c(new Coordinator(store, classes, compiler, std::move(options)));
  absl::MutexLock lock(&c->mu_);
  RETURN_IF_ERROR(c->Load());
  return c;
}

absl::Status Coordinator::Load() {
  ASSIGN_OR_RETURN(StoreSnapshot snap, store_->LoadAll());
  jobs_.clear();
  devices_.clear();
  assignments_.clear();
  metrics_.clear();
  leases_.clear();
  device_by_token_hash_.clear();
  for (v1::Job& job : snap.jobs) {
    JobEntry entry;
    for (const auto& p : job.progress()) entry.plans[p.device_class()] = p.plan();
    entry.job = std::move(job);
    jobs_[entry.job.job_id()] = std::move(entry);
  }
  const absl::Time now = options_.clock();
  for (DeviceRecord& d : snap.devices) {
    const std::string id = d.device.device_id();
    // Fresh lease for every device that was online: coordinator downtime must
    // not count against the fleet.
    if (d.device.state() == v1::DEVICE_STATE_ONLINE) leases_[id] = now + options_.lease;
    device_by_token_hash_[d.token_sha256] = id;
    devices_[id] = std::move(d);
  }
  for (v1::Assignment& a : snap.assignments) assignments_[a.assignment_id()] = std::move(a);
  for (MetricsRecord& m : snap.metrics) metrics_[m.report.assignment_id()] = std::move(m);
  return absl::OkStatus();
}

absl::Status Coordinator::Commit(WriteBatch& batch) {
  if (batch.empty()) return absl::OkStatus();
  absl::Status status = store_->Write(batch);
  batch = WriteBatch();
  if (!status.ok()) {
    // Memory ran ahead of the store: go back to what is durable.
    absl::Status reload = Load();
    return absl::UnavailableError(absl::StrCat(
        "could not persist the change: ", status.message(),
        reload.ok() ? "" : absl::StrCat("; reloading state failed too: ", reload.message())));
  }
  return absl::OkStatus();
}

void Coordinator::Touch(JobEntry& entry, absl::Time now, WriteBatch& batch) {
  ++entry.version;
  *entry.job.mutable_updated_at() = ToProto(now);
  batch.jobs.push_back(entry.job);
}

void Coordinator::Notify() {
  if (options_.on_change) options_.on_change();
}

v1::Job Coordinator::Render(const JobEntry& entry) const {
  v1::Job job = entry.job;
  job.clear_progress();
  for (const auto& target : entry.job.spec().targets()) {
    v1::ClassProgress* p = job.add_progress();
    p->set_device_class(target.device_class());
    auto plan = entry.plans.find(target.device_class());
    if (plan != entry.plans.end()) *p->mutable_plan() = plan->second;
    p->set_wanted(target.devices());
  }
  auto progress_for = [&](const std::string& cls) -> v1::ClassProgress* {
    for (auto& p : *job.mutable_progress()) {
      if (p.device_class() == cls) return &p;
    }
    return nullptr;
  };
  std::map<std::string, int> completed_with_metrics;
  for (const auto& [id, a] : assignments_) {
    if (a.job_id() != job.job_id()) continue;
    v1::ClassProgress* p = progress_for(a.device_class());
    if (p == nullptr) continue;
    switch (a.state()) {
      case v1::ASSIGNMENT_STATE_ASSIGNED:
        p->set_assigned(p->assigned() + 1);
        break;
      case v1::ASSIGNMENT_STATE_RUNNING:
        p->set_assigned(p->assigned() + 1);
        p->set_running(p->running() + 1);
        break;
      case v1::ASSIGNMENT_STATE_COMPLETED:
        p->set_assigned(p->assigned() + 1);
        p->set_completed(p->completed() + 1);
        break;
      case v1::ASSIGNMENT_STATE_FAILED:
        p->set_failed(p->failed() + 1);
        break;
      case v1::ASSIGNMENT_STATE_LOST:
        p->set_lost(p->lost() + 1);
        break;
      default:
        break;
    }
    if (a.state() != v1::ASSIGNMENT_STATE_COMPLETED) continue;
    auto m = metrics_.find(id);
    if (m == metrics_.end()) continue;
    const v1::MetricsReport& r = m->second.report;
    const int n = ++completed_with_metrics[a.device_class()];
    // Running means over completed assignments.
    auto mean = [n](double old, double v) { return old + (v - old) / n; };
    p->set_ms_per_step(mean(p->ms_per_step(), r.ms_per_step()));
    p->set_speedup_vs_dense(mean(p->speedup_vs_dense(), r.speedup_vs_dense()));
    p->set_memory_saving_vs_dense(mean(p->memory_saving_vs_dense(), r.memory_saving_vs_dense()));
    p->set_accuracy_before(mean(p->accuracy_before(), r.accuracy_before()));
    p->set_accuracy_after(mean(p->accuracy_after(), r.accuracy_after()));
    p->set_peak_memory_bytes(std::max(p->peak_memory_bytes(), r.peak_memory_bytes()));
  }
  return job;
}

absl::StatusOr<v1::Job> Coordinator::CreateJob(const v1::JobSpec& spec) {
  RETURN_IF_ERROR(ValidateSpec(spec, *classes_, options_.max_weights_bytes));
  // Compile outside the lock: it is the slow part and touches no state.
  std::map<std::string, CompiledClassPlan> plans;
  for (const auto& target : spec.targets()) {
    ASSIGN_OR_RETURN(const v1::DeviceClass* cls, classes_->Find(target.device_class()));
    const absl::Time start = absl::Now();
    absl::StatusOr<CompiledClassPlan> plan = compiler_->Compile(spec, *cls);
    if (options_.on_compile) options_.on_compile(cls->name(), absl::Now() - start);
    if (!plan.ok()) {
      return absl::Status(plan.status().code(), absl::StrCat("device class '", cls->name(),
                                                             "': ", plan.status().message()));
    }
    plans[cls->name()] = *std::move(plan);
  }
  v1::Job job;
  job.set_job_id(RandomId("job-", 6));
  *job.mutable_spec() = spec;
  const std::string& weights = spec.base_model().safetensors_weights();
  if (!weights.empty()) {
    job.set_base_weights_digest(Sha256Hex(weights));
    RETURN_IF_ERROR(store_->PutBlob(job.base_weights_digest(), "weights", weights));
    job.mutable_spec()->mutable_base_model()->clear_safetensors_weights();
  }
  for (const auto& [cls, plan] : plans) {
    RETURN_IF_ERROR(store_->PutBlob(plan.summary.plan_digest(), "plan", plan.plan_bytes));
  }
  job.set_state(v1::JOB_STATE_PENDING);
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = options_.clock();
    *job.mutable_created_at() = ToProto(now);
    *job.mutable_updated_at() = ToProto(now);
    JobEntry entry;
    entry.job = job;
    for (const auto& [cls, plan] : plans) entry.plans[cls] = plan.summary;
    // Persist the plan summaries with the job so a restart keeps them.
    v1::Job rendered = Render(entry);
    *entry.job.mutable_progress() = rendered.progress();
    WriteBatch batch;
    batch.jobs.push_back(entry.job);
    RETURN_IF_ERROR(store_->Write(batch));
    job = rendered;
    jobs_[job.job_id()] = std::move(entry);
  }
  Notify();
  return job;
}

absl::StatusOr<v1::Job> Coordinator::GetJob(const std::string& job_id) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job '", job_id, "'"));
  return Render(it->second);
}

std::vector<v1::Job> Coordinator::ListJobs(const std::vector<v1::JobState>& states) const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<v1::Job> out;
  for (const auto& [id, entry] : jobs_) {
    if (!states.empty() &&
        std::find(states.begin(), states.end(), entry.job.state()) == states.end()) {
      continue;
    }
    out.push_back(Render(entry));
  }
  std::sort(out.begin(), out.end(), [](const v1::Job& a, const v1::Job& b) {
    const absl::Time ta = FromProto(a.created_at()), tb = FromProto(b.created_at());
    return ta != tb ? ta > tb : a.job_id() < b.job_id();
  });
  return out;
}

std::vector<v1::Job> Coordinator::AllJobs() const { return ListJobs({}); }

void Coordinator::EndJob(JobEntry& entry, v1::JobState state, const std::string& detail,
                         absl::Time now, WriteBatch& batch) {
  entry.job.set_state(state);
  entry.job.set_state_detail(detail);
  for (auto& [id, a] : assignments_) {
    if (a.job_id() != entry.job.job_id() || !Active(a.state())) continue;
    a.set_state(v1::ASSIGNMENT_STATE_CANCELLED);
    a.set_state_detail(absl::StrCat("job ", v1::JobState_Name(state)));
    *a.mutable_ended_at() = ToProto(now);
    batch.assignments.push_back(a);
    // The device keeps the id until its next heartbeat tells it to stop.
  }
  Touch(entry, now, batch);
}

void Coordinator::Settle(JobEntry& entry, absl::Time now, WriteBatch& batch) {
  if (Terminal(entry.job.state())) return;
  int wanted = 0;
  for (const auto& t : entry.job.spec().targets()) wanted += t.devices();
  const int need = entry.job.spec().completion().min_devices() > 0
                       ? entry.job.spec().completion().min_devices()
                       : wanted;
  int completed = 0;
  for (const auto& [id, a] : assignments_) {
    if (a.job_id() == entry.job.job_id() && a.state() == v1::ASSIGNMENT_STATE_COMPLETED) {
      ++completed;
    }
  }
  if (completed >= need) {
    EndJob(entry, v1::JOB_STATE_SUCCEEDED,
           absl::StrCat(completed, " of ", wanted, " devices completed"), now, batch);
    return;
  }
  if (entry.job.spec().completion().has_deadline() &&
      now >= FromProto(entry.job.spec().completion().deadline())) {
    EndJob(entry, v1::JOB_STATE_FAILED,
           absl::StrCat("deadline passed with ", completed, " of the ", need,
                        " completed devices the policy requires"),
           now, batch);
  }
}

absl::StatusOr<v1::Job> Coordinator::CancelJob(const std::string& job_id) {
  v1::Job out;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job '", job_id, "'"));
    if (Terminal(it->second.job.state())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job '", job_id, "' already ended (", v1::JobState_Name(it->second.job.state()), ")"));
    }
    WriteBatch batch;
    EndJob(it->second, v1::JOB_STATE_CANCELLED, "cancelled by an operator", options_.clock(),
           batch);
    RETURN_IF_ERROR(Commit(batch));
    out = Render(jobs_.at(job_id));
  }
  Notify();
  return out;
}

std::vector<v1::Device> Coordinator::ListDevices(const std::string& device_class) const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<v1::Device> out;
  for (const auto& [id, d] : devices_) {
    if (device_class.empty() || d.device.device_class() == device_class) out.push_back(d.device);
  }
  return out;
}

absl::StatusOr<std::pair<v1::Job, uint64_t>> Coordinator::WaitForJob(const std::string& job_id,
                                                                     uint64_t version,
                                                                     absl::Duration timeout) const {
  absl::ReaderMutexLock lock(&mu_);
  auto changed = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    auto it = jobs_.find(job_id);
    return it == jobs_.end() || it->second.version != version;
  };
  mu_.AwaitWithTimeout(absl::Condition(&changed), timeout);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job '", job_id, "'"));
  return std::make_pair(Render(it->second), it->second.version);
}

absl::StatusOr<RegisterResult> Coordinator::Register(const v1::DeviceProfile& profile,
                                                     const std::string& device_id) {
  RETURN_IF_ERROR(ValidateProfile(profile));
  ASSIGN_OR_RETURN(std::string cls, classes_->Classify(profile));
  RegisterResult result;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = options_.clock();
    DeviceRecord record;
    if (!device_id.empty()) {
      auto it = devices_.find(device_id);
      if (it == devices_.end()) {
        return absl::NotFoundError(
            absl::StrCat("no device '", device_id, "'; register without a device_id"));
      }
      record = it->second;
      device_by_token_hash_.erase(record.token_sha256);
    } else {
      record.device.set_device_id(RandomId("dev-", 6));
      *record.device.mutable_registered_at() = ToProto(now);
    }
    result.device_token = RandomId("", 32);
    record.token_sha256 = Sha256Hex(result.device_token);
    *record.device.mutable_profile() = profile;
    record.device.set_device_class(cls);
    record.device.set_state(v1::DEVICE_STATE_ONLINE);
    *record.device.mutable_last_heartbeat() = ToProto(now);
    WriteBatch batch;
    batch.devices.push_back(record);
    RETURN_IF_ERROR(Commit(batch));
    const std::string id = record.device.device_id();
    device_by_token_hash_[record.token_sha256] = id;
    devices_[id] = std::move(record);
    leases_[id] = now + options_.lease;
    result.device_id = id;
    result.device_class = cls;
    result.lease = options_.lease;
  }
  Notify();
  return result;
}

absl::StatusOr<std::string> Coordinator::AuthenticateDevice(const std::string& token) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = device_by_token_hash_.find(Sha256Hex(token));
  if (token.empty() || it == device_by_token_hash_.end()) {
    return absl::UnauthenticatedError("unknown device token: register again");
  }
  return it->second;
}

std::optional<v1::Assignment> Coordinator::Assign(DeviceRecord& device, absl::Time now,
                                                  WriteBatch& batch) {
  // Oldest job first.
  std::vector<JobEntry*> order;
  for (auto& [id, entry] : jobs_) {
    if (!Terminal(entry.job.state())) order.push_back(&entry);
  }
  std::sort(order.begin(), order.end(), [](const JobEntry* a, const JobEntry* b) {
    const absl::Time ta = FromProto(a->job.created_at()), tb = FromProto(b->job.created_at());
    return ta != tb ? ta < tb : a->job.job_id() < b->job.job_id();
  });
  const std::string& cls = device.device.device_class();
  for (JobEntry* entry : order) {
    const v1::ClassTarget* target = nullptr;
    for (const auto& t : entry->job.spec().targets()) {
      if (t.device_class() == cls) target = &t;
    }
    if (target == nullptr) continue;
    int taken = 0;
    bool tried_before = false;
    for (const auto& [id, a] : assignments_) {
      if (a.job_id() != entry->job.job_id()) continue;
      if (a.device_id() == device.device.device_id()) tried_before = true;
      if (a.device_class() == cls &&
          (Active(a.state()) || a.state() == v1::ASSIGNMENT_STATE_COMPLETED)) {
        ++taken;
      }
    }
    if (tried_before || taken >= target->devices()) continue;
    const v1::PlanSummary& plan = entry->plans.at(cls);
    absl::StatusOr<uint64_t> plan_size = store_->BlobSize(plan.plan_digest());
    if (!plan_size.ok()) continue;  // should not happen; never hand out a missing plan
    v1::Assignment a;
    a.set_assignment_id(RandomId("asg-", 6));
    a.set_job_id(entry->job.job_id());
    a.set_device_id(device.device.device_id());
    a.set_device_class(cls);
    a.set_state(v1::ASSIGNMENT_STATE_ASSIGNED);
    a.set_plan_digest(plan.plan_digest());
    a.set_plan_bytes(*plan_size);
    if (!entry->job.base_weights_digest().empty()) {
      a.set_base_weights_digest(entry->job.base_weights_digest());
      absl::StatusOr<uint64_t> w = store_->BlobSize(a.base_weights_digest());
      a.set_base_weights_bytes(w.ok() ? *w : 0);
    }
    a.set_dataset(entry->job.spec().dataset());
    a.set_task(entry->job.spec().task());
    *a.mutable_hyper_parameters() = entry->job.spec().hyper_parameters();
    a.set_memory_budget_bytes(plan.budget_bytes());
    *a.mutable_assigned_at() = ToProto(now);
    assignments_[a.assignment_id()] = a;
    batch.assignments.push_back(a);
    device.device.set_assignment_id(a.assignment_id());
    if (entry->job.state() == v1::JOB_STATE_PENDING) entry->job.set_state(v1::JOB_STATE_RUNNING);
    Touch(*entry, now, batch);
    return a;
  }
  return std::nullopt;
}

absl::StatusOr<HeartbeatResult> Coordinator::Heartbeat(const std::string& device_id) {
  HeartbeatResult result;
  {
    absl::MutexLock lock(&mu_);
    auto it = devices_.find(device_id);
    if (it == devices_.end())
      return absl::NotFoundError(absl::StrCat("no device '", device_id, "'"));
    DeviceRecord& device = it->second;
    const absl::Time now = options_.clock();
    WriteBatch batch;
    device.device.set_state(v1::DEVICE_STATE_ONLINE);
    *device.device.mutable_last_heartbeat() = ToProto(now);
    leases_[device_id] = now + options_.lease;
    result.lease_expires_at = leases_[device_id];
    const std::string current = device.device.assignment_id();
    auto a = assignments_.find(current);
    if (a != assignments_.end() && Active(a->second.state())) {
      result.assignment = a->second;
    } else {
      if (a != assignments_.end()) {
        // Tell the device once that its assignment ended (cancelled or lost).
        result.assignment = a->second;
      }
      device.device.clear_assignment_id();
      if (a == assignments_.end()) result.assignment = Assign(device, now, batch);
    }
    batch.devices.push_back(device);
    RETURN_IF_ERROR(Commit(batch));
  }
  Notify();
  return result;
}

absl::StatusOr<v1::Assignment*> Coordinator::DeviceAssignment(const std::string& device_id,
                                                              const std::string& assignment_id) {
  if (devices_.find(device_id) == devices_.end()) {
    return absl::NotFoundError(absl::StrCat("no device '", device_id, "'"));
  }
  auto it = assignments_.find(assignment_id);
  if (it == assignments_.end()) {
    return absl::NotFoundError(absl::StrCat("no assignment '", assignment_id, "'"));
  }
  if (it->second.device_id() != device_id) {
    return absl::PermissionDeniedError(
        absl::StrCat("assignment '", assignment_id, "' belongs to another device"));
  }
  return &it->second;
}

absl::StatusOr<ReportResult> Coordinator::ReportMetrics(const std::string& device_id,
                                                        const v1::MetricsReport& report) {
  RETURN_IF_ERROR(ValidateReport(report));
  ReportResult result;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(v1::Assignment * a, DeviceAssignment(device_id, report.assignment_id()));
    result.cancelled = a->state() == v1::ASSIGNMENT_STATE_CANCELLED;
    auto m = metrics_.find(a->assignment_id());
    const bool stale = m != metrics_.end() && m->second.report.sequence() >= report.sequence();
    if (!Active(a->state()) || stale) return result;  // idempotent: nothing changes
    const absl::Time now = options_.clock();
    WriteBatch batch;
    MetricsRecord record{a->job_id(), a->device_class(), report};
    metrics_[a->assignment_id()] = record;
    batch.metrics.push_back(record);
    if (a->state() == v1::ASSIGNMENT_STATE_ASSIGNED) {
      a->set_state(v1::ASSIGNMENT_STATE_RUNNING);
      batch.assignments.push_back(*a);
    }
    Touch(jobs_.at(a->job_id()), now, batch);
    RETURN_IF_ERROR(Commit(batch));
    result.accepted = true;
  }
  Notify();
  return result;
}

absl::Status Coordinator::CompleteAssignment(const std::string& device_id,
                                             const v1::MetricsReport& report) {
  RETURN_IF_ERROR(ValidateReport(report));
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(v1::Assignment * a, DeviceAssignment(device_id, report.assignment_id()));
    // Completed already: a retry. Failed or cancelled: the outcome stands.
    // Lost: the device was only unreachable, and its result still counts.
    if (!Active(a->state()) && a->state() != v1::ASSIGNMENT_STATE_LOST) {
      return absl::OkStatus();
    }
    const absl::Time now = options_.clock();
    WriteBatch batch;
    a->set_state(v1::ASSIGNMENT_STATE_COMPLETED);
    a->clear_state_detail();
    *a->mutable_ended_at() = ToProto(now);
    batch.assignments.push_back(*a);
    auto m = metrics_.find(a->assignment_id());
    if (m == metrics_.end() || m->second.report.sequence() <= report.sequence()) {
      MetricsRecord record{a->job_id(), a->device_class(), report};
      metrics_[a->assignment_id()] = record;
      batch.metrics.push_back(record);
    }
    DeviceRecord& device = devices_.at(device_id);
    if (device.device.assignment_id() == a->assignment_id()) {
      device.device.clear_assignment_id();
      batch.devices.push_back(device);
    }
    JobEntry& entry = jobs_.at(a->job_id());
    Touch(entry, now, batch);
    Settle(entry, now, batch);
    RETURN_IF_ERROR(Commit(batch));
  }
  Notify();
  return absl::OkStatus();
}

absl::Status Coordinator::FailAssignment(const std::string& device_id,
                                         const std::string& assignment_id, v1::FailureKind kind,
                                         const std::string& detail) {
  if (detail.size() > kMaxFailureDetail) {
    return absl::InvalidArgumentError(
        absl::StrCat("failure detail is ", detail.size(), " bytes, at most ", kMaxFailureDetail));
  }
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(v1::Assignment * a, DeviceAssignment(device_id, assignment_id));
    if (!Active(a->state())) return absl::OkStatus();  // a retry, or it already ended
    const absl::Time now = options_.clock();
    WriteBatch batch;
    a->set_state(v1::ASSIGNMENT_STATE_FAILED);
    a->set_failure_kind(kind);
    a->set_state_detail(detail);
    *a->mutable_ended_at() = ToProto(now);
    batch.assignments.push_back(*a);
    DeviceRecord& device = devices_.at(device_id);
    device.device.clear_assignment_id();
    batch.devices.push_back(device);
    Touch(jobs_.at(a->job_id()), now, batch);
    RETURN_IF_ERROR(Commit(batch));
  }
  Notify();
  return absl::OkStatus();
}

absl::StatusOr<std::string> Coordinator::ReadBlob(const std::string& device_id,
                                                  const std::string& digest, uint64_t offset,
                                                  uint64_t max_bytes, uint64_t* total_bytes) const {
  {
    absl::ReaderMutexLock lock(&mu_);
    bool named = false;
    for (const auto& [id, a] : assignments_) {
      if (a.device_id() == device_id &&
          (a.plan_digest() == digest || a.base_weights_digest() == digest)) {
        named = true;
        break;
      }
    }
    if (!named) {
      return absl::PermissionDeniedError(
          absl::StrCat("blob ", digest, " is not part of any assignment of this device"));
    }
  }
  return store_->ReadBlob(digest, offset, max_bytes, total_bytes);
}

absl::Status Coordinator::Tick() {
  bool changed = false;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = options_.clock();
    WriteBatch batch;
    for (auto& [id, device] : devices_) {
      auto lease = leases_.find(id);
      if (device.device.state() != v1::DEVICE_STATE_ONLINE || lease == leases_.end() ||
          lease->second > now) {
        continue;
      }
      device.device.set_state(v1::DEVICE_STATE_OFFLINE);
      leases_.erase(lease);
      auto a = assignments_.find(device.device.assignment_id());
      if (a != assignments_.end() && Active(a->second.state())) {
        a->second.set_state(v1::ASSIGNMENT_STATE_LOST);
        a->second.set_state_detail("lease expired: no heartbeat");
        *a->second.mutable_ended_at() = ToProto(now);
        batch.assignments.push_back(a->second);
        Touch(jobs_.at(a->second.job_id()), now, batch);
      }
      batch.devices.push_back(device);
    }
    for (auto& [id, entry] : jobs_) Settle(entry, now, batch);
    changed = !batch.empty();
    RETURN_IF_ERROR(Commit(batch));
  }
  if (changed) Notify();
  return absl::OkStatus();
}

FleetCounts Coordinator::Counts() const {
  absl::ReaderMutexLock lock(&mu_);
  FleetCounts counts;
  for (const auto& cls : classes_->classes()) counts.online_by_class[cls.name()] = 0;
  for (const auto& [id, d] : devices_) {
    if (d.device.state() == v1::DEVICE_STATE_ONLINE)
      ++counts.online_by_class[d.device.device_class()];
  }
  for (int s = v1::JOB_STATE_PENDING; s <= v1::JOB_STATE_CANCELLED; ++s) {
    counts.jobs_by_state[static_cast<v1::JobState>(s)] = 0;
  }
  for (const auto& [id, e] : jobs_) ++counts.jobs_by_state[e.job.state()];
  return counts;
}

}  // namespace fleettune::server
