#include "agent/core/agent.h"

#include <google/protobuf/text_format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "agent/data/local_dataset.h"
#include "agent/inference/mlp_classifier.h"
#include "agent/runner/plan_runner.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "engine/io/safetensors.h"
#include "server/base/sha256.h"
#include "server/grpc/status.h"

namespace fleettune::agent {
namespace {

bool Active(v1::AssignmentState s) {
  return s == v1::ASSIGNMENT_STATE_ASSIGNED || s == v1::ASSIGNMENT_STATE_RUNNING;
}

std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoNanoseconds(d);
}

}  // namespace

Agent::Agent(AgentOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)), stub_(v1::AgentService::NewStub(channel)) {}

Agent::~Agent() {
  cancel_work_ = true;
  if (worker_.joinable()) worker_.join();
}

void Agent::Log(const std::string& line) const {
  std::fprintf(stderr, "fleettune-agent[%s]: %s\n", device_id().c_str(), line.c_str());
}

std::string Agent::device_id() const {
  absl::MutexLock lock(&mu_);
  return registration_.has_value() ? registration_->device_id : "unregistered";
}

void Agent::Sleep(absl::Duration d) {
  const absl::Time end = absl::Now() + d;
  while (absl::Now() < end && !stop_->load()) {
    absl::SleepFor(std::min(absl::Milliseconds(50), end - absl::Now()));
  }
}

void Agent::Prepare(grpc::ClientContext* ctx) const {
  ctx->set_deadline(Deadline(options_.rpc_timeout));
  absl::MutexLock lock(&mu_);
  if (registration_.has_value()) {
    ctx->AddMetadata("authorization", "Bearer " + registration_->token);
  }
}

absl::Status Agent::LoadRegistration() {
  const std::string path = options_.config.state_dir() + "/registration.txt";
  absl::StatusOr<std::string> text = engine::ReadFileToString(path, 4096);
  if (absl::IsNotFound(text.status())) return absl::OkStatus();
  RETURN_IF_ERROR(text.status());
  v1::RegisterResponse saved;
  if (!google::protobuf::TextFormat::ParseFromString(*text, &saved) || saved.device_id().empty()) {
    Log(absl::StrCat(path, " is unreadable; registering anew"));
    return absl::OkStatus();
  }
  absl::MutexLock lock(&mu_);
  registration_ = Registration{saved.device_id(), saved.device_token()};
  return absl::OkStatus();
}

absl::Status Agent::Register() {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.rpc_timeout));
  ctx.AddMetadata("authorization", "Bearer " + options_.enrollment_token);
  v1::RegisterRequest req;
  *req.mutable_profile() = options_.profile;
  {
    absl::MutexLock lock(&mu_);
    if (registration_.has_value()) req.set_device_id(registration_->device_id);
  }
  v1::RegisterResponse resp;
  grpc::Status s = stub_->Register(&ctx, req, &resp);
  if (s.error_code() == grpc::StatusCode::NOT_FOUND && !req.device_id().empty()) {
    // The coordinator forgot this device (a new database): enroll afresh.
    absl::MutexLock lock(&mu_);
    registration_.reset();
    return absl::UnavailableError("device unknown to the coordinator; re-enrolling");
  }
  RETURN_IF_ERROR(server::FromGrpcStatus(s));
  std::string text;
  google::protobuf::TextFormat::PrintToString(resp, &text);
  RETURN_IF_ERROR(
      engine::WriteFileAtomically(options_.config.state_dir() + "/registration.txt", text));
  {
    absl::MutexLock lock(&mu_);
    registration_ = Registration{resp.device_id(), resp.device_token()};
  }
  Log(absl::StrCat("registered as class ", resp.device_class()));
  return absl::OkStatus();
}

absl::Status Agent::Run(const std::atomic<bool>& stop) {
  stop_ = &stop;
  std::error_code ec;
  std::filesystem::create_directories(options_.config.state_dir() + "/blobs", ec);
  std::filesystem::create_directories(options_.config.state_dir() + "/results", ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot create the state directory ", options_.config.state_dir(), ": ", ec.message()));
  }
  RETURN_IF_ERROR(LoadRegistration());
  RETURN_IF_ERROR(StartInference());
  absl::Duration backoff = absl::Milliseconds(200);
  absl::Duration interval = absl::Seconds(
      options_.config.heartbeat_seconds() > 0 ? options_.config.heartbeat_seconds() : 2);
  bool registered = false;
  {
    absl::MutexLock lock(&mu_);
    registered = registration_.has_value();
  }
  while (!stop.load()) {
    if (!registered) {
      absl::Status s = Register();
      if (!s.ok()) {
        Log(absl::StrCat("register: ", s.ToString(), "; retrying"));
        Sleep(backoff);
        backoff = std::min(backoff * 2, options_.max_backoff);
        continue;
      }
      registered = true;
    }
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::HeartbeatRequest req;
    req.set_device_id(device_id());
    v1::HeartbeatResponse resp;
    grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
    if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
        s.error_code() == grpc::StatusCode::NOT_FOUND) {
      Log("the coordinator does not know this device's token; registering again");
      registered = false;
      continue;
    }
    if (!s.ok()) {
      Log(absl::StrCat("heartbeat: ", s.error_message(), "; retrying"));
      Sleep(backoff);
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    backoff = absl::Milliseconds(200);
    if (options_.config.heartbeat_seconds() == 0 && resp.has_lease_expires_at()) {
      // A third of the lease leaves two chances before it expires.
      const absl::Duration lease =
          absl::FromUnixSeconds(resp.lease_expires_at().seconds()) - absl::Now();
      interval = std::clamp(lease / 3, absl::Milliseconds(100), absl::Seconds(10));
    }
    if (work_done_.load() && worker_.joinable()) worker_.join();
    if (resp.has_assignment()) {
      const v1::Assignment& a = resp.assignment();
      std::string running;
      {
        absl::MutexLock lock(&mu_);
        running = running_assignment_;
      }
      if (Active(a.state()) && work_done_.load()) {
        StartWork(a);
      } else if (!Active(a.state()) && a.assignment_id() == running) {
        Log(absl::StrCat("assignment ", a.assignment_id(), " ended on the coordinator (",
                         v1::AssignmentState_Name(a.state()), "); stopping"));
        cancel_work_ = true;
      }
    }
    Sleep(interval);
  }
  cancel_work_ = true;
  if (worker_.joinable()) worker_.join();
  if (inference_ != nullptr) inference_->Stop();
  return absl::OkStatus();
}

absl::Status Agent::StartInference() {
  if (options_.config.inference_socket().empty()) return absl::OkStatus();
  // The newest personalized model from an earlier run, if any.
  std::error_code ec;
  std::filesystem::file_time_type newest;
  std::string newest_job;
  for (const auto& entry :
       std::filesystem::directory_iterator(options_.config.state_dir() + "/personalized", ec)) {
    if (entry.path().extension() == ".safetensors" &&
        (newest_job.empty() || entry.last_write_time() > newest)) {
      newest = entry.last_write_time();
      newest_job = entry.path().stem().string();
    }
  }
  if (!newest_job.empty()) UsePersonalizedModel(newest_job);
  InferenceServer::Options o;
  o.socket_path = options_.config.inference_socket();
  o.classifier = [this](absl::Span<const float> sample) -> absl::StatusOr<std::vector<float>> {
    std::shared_ptr<const Classifier> current;
    {
      absl::MutexLock lock(&mu_);
      current = classifier_;
    }
    if (current == nullptr) {
      return absl::FailedPreconditionError("no personalized model on this device yet");
    }
    return (*current)(sample);
  };
  inference_ = std::make_unique<InferenceServer>(std::move(o));
  return inference_->Start();
}

void Agent::UsePersonalizedModel(const std::string& job_id) {
  const std::string path = PersonalizedWeightsPath(options_.config.state_dir(), job_id);
  // Layer sizes from the weights: fc1.weight [h1, in], fc2.weight [h2, h1], ...
  absl::StatusOr<std::map<std::string, engine::Tensor>> weights = engine::io::ReadSafetensors(path);
  if (!weights.ok()) {
    Log(absl::StrCat("local inference: ", weights.status().ToString()));
    return;
  }
  std::vector<int64_t> sizes;
  for (int i = 1;; ++i) {
    auto it = weights->find(absl::StrCat("fc", i, ".weight"));
    if (it == weights->end() || it->second.shape().size() != 2) break;
    if (sizes.empty()) sizes.push_back(it->second.shape()[1]);
    sizes.push_back(it->second.shape()[0]);
  }
  absl::StatusOr<Classifier> classifier = MakeMlpClassifier(path, sizes);
  if (!classifier.ok()) {
    Log(absl::StrCat("local inference: ", classifier.status().ToString()));
    return;
  }
  absl::MutexLock lock(&mu_);
  classifier_ = std::make_shared<const Classifier>(*std::move(classifier));
}

void Agent::StartWork(const v1::Assignment& assignment) {
  if (worker_.joinable()) worker_.join();
  {
    absl::MutexLock lock(&mu_);
    running_assignment_ = assignment.assignment_id();
  }
  cancel_work_ = false;
  work_done_ = false;
  worker_ = std::thread([this, assignment] {
    Work(assignment);
    absl::MutexLock lock(&mu_);
    running_assignment_.clear();
    work_done_ = true;
  });
}

absl::StatusOr<std::string> Agent::FetchBlob(const std::string& digest) {
  const std::string path = absl::StrCat(options_.config.state_dir(), "/blobs/", digest);
  if (std::filesystem::exists(path)) {
    ASSIGN_OR_RETURN(std::string bytes, engine::ReadFileToString(path));
    if (server::Sha256Hex(bytes) == digest) return bytes;
    std::filesystem::remove(path);  // corrupt on disk: fetch again
  }
  const std::string part = path + ".part";
  for (int attempt = 0; !stop_->load() && !cancel_work_.load(); ++attempt) {
    std::error_code ec;
    const uint64_t offset =
        std::filesystem::exists(part) ? std::filesystem::file_size(part, ec) : 0;
    grpc::ClientContext ctx;
    Prepare(&ctx);
    ctx.set_deadline(Deadline(absl::Minutes(5)));  // a large blob takes a while
    v1::FetchBlobRequest req;
    req.set_digest(digest);
    req.set_offset(offset);
    auto reader = stub_->FetchBlob(&ctx, req);
    std::ofstream out(part, std::ios::binary | std::ios::app);
    v1::FetchBlobResponse chunk;
    while (reader->Read(&chunk)) out.write(chunk.data().data(), chunk.data().size());
    out.close();
    grpc::Status s = reader->Finish();
    if (s.error_code() == grpc::StatusCode::OUT_OF_RANGE) {
      std::filesystem::remove(part);  // our partial file is longer than the blob
      continue;
    }
    if (s.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
        s.error_code() == grpc::StatusCode::NOT_FOUND ||
        s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      return server::FromGrpcStatus(s);
    }
    if (!s.ok()) {
      Log(absl::StrCat("fetch ", digest.substr(0, 12), ": ", s.error_message(), "; resuming"));
      Sleep(std::min(absl::Milliseconds(200) * (1 << std::min(attempt, 5)), options_.max_backoff));
      continue;
    }
    ASSIGN_OR_RETURN(std::string bytes, engine::ReadFileToString(part));
    if (server::Sha256Hex(bytes) != digest) {
      std::filesystem::remove(part);
      if (attempt >= 3) {
        return absl::DataLossError(absl::StrCat("blob ", digest, " fails its SHA-256 check"));
      }
      continue;
    }
    std::filesystem::rename(part, path, ec);
    return bytes;
  }
  return absl::CancelledError("stopped while fetching");
}

void Agent::Report(const v1::MetricsReport& report) {
  // Best effort: a later report supersedes a lost one.
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::ReportMetricsRequest req;
  req.set_device_id(device_id());
  *req.mutable_report() = report;
  v1::ReportMetricsResponse resp;
  grpc::Status s = stub_->ReportMetrics(&ctx, req, &resp);
  if (s.ok() && resp.cancelled()) cancel_work_ = true;
}

void Agent::RetryWhileUnavailable(const std::function<grpc::Status()>& call) {
  absl::Duration backoff = absl::Milliseconds(200);
  while (!stop_->load()) {
    grpc::Status s = call();
    // Only a coordinator that cannot be reached is worth retrying; any answer,
    // even an error, settles the matter.
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
        s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      return;
    }
    Log(absl::StrCat("coordinator unreachable (", s.error_message(), "); retrying"));
    Sleep(backoff);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

void Agent::Finish(const v1::Assignment& assignment, const v1::MetricsReport& report) {
  RetryWhileUnavailable([&] {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::CompleteAssignmentRequest req;
    req.set_device_id(device_id());
    *req.mutable_final_report() = report;
    v1::CompleteAssignmentResponse resp;
    return stub_->CompleteAssignment(&ctx, req, &resp);
  });
  if (stop_->load()) return;  // the result stays on disk for the next run
  std::filesystem::remove(
      absl::StrCat(options_.config.state_dir(), "/results/", assignment.assignment_id()));
  Log(absl::StrCat("assignment ", assignment.assignment_id(), " complete: accuracy ",
                   report.accuracy_before(), " -> ", report.accuracy_after()));
}

void Agent::Fail(const v1::Assignment& assignment, v1::FailureKind kind,
                 const std::string& detail) {
  Log(absl::StrCat("assignment ", assignment.assignment_id(), " failed: ", detail));
  RetryWhileUnavailable([&] {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::FailAssignmentRequest req;
    req.set_device_id(device_id());
    req.set_assignment_id(assignment.assignment_id());
    req.set_kind(kind);
    req.set_detail(detail.substr(0, 512));
    v1::FailAssignmentResponse resp;
    return stub_->FailAssignment(&ctx, req, &resp);
  });
}

void Agent::Work(v1::Assignment a) {
  const std::string result_path =
      absl::StrCat(options_.config.state_dir(), "/results/", a.assignment_id());
  // Finished before a crash or while the coordinator was away: just deliver it.
  if (absl::StatusOr<std::string> saved = engine::ReadFileToString(result_path, 1 << 20);
      saved.ok()) {
    v1::MetricsReport report;
    if (report.ParseFromString(*saved)) {
      Finish(a, report);
      return;
    }
  }
  const v1::LocalDataset* dataset = nullptr;
  for (const auto& d : options_.config.datasets()) {
    if (d.name() == a.dataset()) dataset = &d;
  }
  if (dataset == nullptr) {
    Fail(a, v1::FAILURE_KIND_DATASET_MISSING,
         absl::StrCat("no local dataset named '", a.dataset(), "' in the agent config"));
    return;
  }
  absl::StatusOr<SplitData> data = LoadLocalDataset(*dataset);
  if (!data.ok()) {
    Fail(a,
         absl::IsNotFound(data.status()) ? v1::FAILURE_KIND_DATASET_MISSING
                                         : v1::FAILURE_KIND_DATASET_INVALID,
         absl::StrCat("local dataset '", a.dataset(), "': ", data.status().message()));
    return;
  }
  PlanRunInputs in;
  absl::StatusOr<std::string> plan = FetchBlob(a.plan_digest());
  if (!plan.ok()) {
    if (!absl::IsCancelled(plan.status())) {
      Fail(a, v1::FAILURE_KIND_PLAN_INVALID, absl::StrCat("plan: ", plan.status().message()));
    }
    return;
  }
  in.plan_bytes = *std::move(plan);
  if (!a.base_weights_digest().empty()) {
    absl::StatusOr<std::string> weights = FetchBlob(a.base_weights_digest());
    if (!weights.ok()) {
      if (!absl::IsCancelled(weights.status())) {
        Fail(a, v1::FAILURE_KIND_PLAN_INVALID,
             absl::StrCat("base weights: ", weights.status().message()));
      }
      return;
    }
    in.base_weights = *std::move(weights);
  }
  in.assignment = a;
  in.data = &*data;
  in.state_dir = options_.config.state_dir();
  in.checkpoint_every_steps =
      options_.config.checkpoint_every_steps() > 0 ? options_.config.checkpoint_every_steps() : 20;
  in.threads = options_.threads;
  const bool resuming = std::filesystem::exists(
      absl::StrCat(in.state_dir, "/checkpoints/", a.assignment_id(), ".safetensors"));
  Log(absl::StrCat(resuming ? "resuming assignment " : "running assignment ", a.assignment_id(),
                   " of job ", a.job_id(), " on ", data->train.labels.num_elements(),
                   " local samples", resuming ? " from its last checkpoint" : ""));
  absl::StatusOr<v1::MetricsReport> result = RunPlan(
      in, [this](const v1::MetricsReport& r) { Report(r); }, &cancel_work_);
  if (!result.ok()) {
    if (absl::IsCancelled(result.status())) return;
    const v1::FailureKind kind =
        absl::IsResourceExhausted(result.status()) ? v1::FAILURE_KIND_OUT_OF_MEMORY
        : absl::IsInvalidArgument(result.status()) ? v1::FAILURE_KIND_PLAN_INVALID
                                                   : v1::FAILURE_KIND_INTERNAL;
    Fail(a, kind, std::string(result.status().message()));
    return;
  }
  if (inference_ != nullptr) UsePersonalizedModel(a.job_id());
  // Keep the result until the coordinator confirms it.
  (void)engine::WriteFileAtomically(result_path, result->SerializeAsString());
  Finish(a, *result);
}

}  // namespace fleettune::agent
