#include "server/grpc/services.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "server/base/ids.h"
#include "server/base/sha256.h"
#include "server/grpc/status.h"

namespace fleettune::server {
namespace {

bool Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

}  // namespace

// --- FleetService ------------------------------------------------------------

grpc::Status FleetServiceImpl::Finish(const char* method, const absl::Status& status) {
  grpc::Status out = ToGrpcStatus(status);
  if (metrics_ != nullptr) metrics_->RecordRpc("FleetService", method, out.error_code());
  return out;
}

grpc::Status FleetServiceImpl::CreateJob(grpc::ServerContext* context,
                                         const v1::CreateJobRequest* request,
                                         v1::CreateJobResponse* response) {
  return Finish("CreateJob", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckToken(*context, *tokens_, "operator"));
    ASSIGN_OR_RETURN(*response->mutable_job(), coordinator_->CreateJob(request->spec()));
    return absl::OkStatus();
  }());
}

grpc::Status FleetServiceImpl::GetJob(grpc::ServerContext* context,
                                      const v1::GetJobRequest* request,
                                      v1::GetJobResponse* response) {
  return Finish("GetJob", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckToken(*context, *tokens_, "operator"));
    ASSIGN_OR_RETURN(*response->mutable_job(), coordinator_->GetJob(request->job_id()));
    return absl::OkStatus();
  }());
}

grpc::Status FleetServiceImpl::ListJobs(grpc::ServerContext* context,
                                        const v1::ListJobsRequest* request,
                                        v1::ListJobsResponse* response) {
  return Finish("ListJobs", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckToken(*context, *tokens_, "operator"));
    std::vector<v1::JobState> states;
    for (int s : request->states()) states.push_back(static_cast<v1::JobState>(s));
    for (v1::Job& job : coordinator_->ListJobs(states)) *response->add_jobs() = std::move(job);
    return absl::OkStatus();
  }());
}

grpc::Status FleetServiceImpl::WatchJob(grpc::ServerContext* context,
                                        const v1::WatchJobRequest* request,
                                        grpc::ServerWriter<v1::WatchJobResponse>* writer) {
  return Finish("WatchJob", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckToken(*context, *tokens_, "operator"));
    uint64_t version = 0;
    bool first = true;
    while (!context->IsCancelled()) {
      ASSIGN_OR_RETURN(auto job_and_version,
                       coordinator_->WaitForJob(request->job_id(), version, absl::Seconds(1)));
      auto& [job, current] = job_and_version;
      if (first || current != version) {
        v1::WatchJobResponse response;
        *response.mutable_job() = job;
        if (!writer->Write(response)) return absl::OkStatus();  // client went away
        first = false;
        version = current;
      }
      if (Terminal(job.state())) return absl::OkStatus();
    }
    return absl::CancelledError("watch cancelled");
  }());
}

grpc::Status FleetServiceImpl::CancelJob(grpc::ServerContext* context,
                                         const v1::CancelJobRequest* request,
                                         v1::CancelJobResponse* response) {
  return Finish("CancelJob", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckToken(*context, *tokens_, "operator"));
    ASSIGN_OR_RETURN(*response->mutable_job(), coordinator_->CancelJob(request->job_id()));
    return absl::OkStatus();
  }());
}

grpc::Status FleetServiceImpl::ListDevices(grpc::ServerContext* context,
                                           const v1::ListDevicesRequest* request,
                                           v1::ListDevicesResponse* response) {
  return Finish("ListDevices", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckToken(*context, *tokens_, "operator"));
    if (!request->device_class().empty()) {
      RETURN_IF_ERROR(coordinator_->device_classes().Find(request->device_class()).status());
    }
    for (v1::Device& d : coordinator_->ListDevices(request->device_class())) {
      *response->add_devices() = std::move(d);
    }
    return absl::OkStatus();
  }());
}

grpc::Status FleetServiceImpl::ListDeviceClasses(grpc::ServerContext* context,
                                                 const v1::ListDeviceClassesRequest*,
                                                 v1::ListDeviceClassesResponse* response) {
  return Finish("ListDeviceClasses", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckToken(*context, *tokens_, "operator"));
    for (const auto& c : coordinator_->device_classes().classes()) *response->add_classes() = c;
    return absl::OkStatus();
  }());
}

// --- AgentService ------------------------------------------------------------

grpc::Status AgentServiceImpl::Finish(const char* method, const absl::Status& status) {
  grpc::Status out = ToGrpcStatus(status);
  if (metrics_ != nullptr) metrics_->RecordRpc("AgentService", method, out.error_code());
  return out;
}

absl::Status AgentServiceImpl::CheckDevice(const grpc::ServerContext& context,
                                           const std::string& device_id) {
  ASSIGN_OR_RETURN(std::string token, BearerToken(context));
  ASSIGN_OR_RETURN(std::string owner, coordinator_->AuthenticateDevice(token));
  if (owner != device_id) {
    return absl::PermissionDeniedError(
        absl::StrCat("the token belongs to device '", owner, "', not '", device_id, "'"));
  }
  return absl::OkStatus();
}

grpc::Status AgentServiceImpl::Register(grpc::ServerContext* context,
                                        const v1::RegisterRequest* request,
                                        v1::RegisterResponse* response) {
  return Finish("Register", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckToken(*context, *tokens_, "enrollment"));
    ASSIGN_OR_RETURN(RegisterResult r,
                     coordinator_->Register(request->profile(), request->device_id()));
    response->set_device_id(r.device_id);
    response->set_device_class(r.device_class);
    response->set_device_token(r.device_token);
    response->set_lease_seconds(static_cast<int32_t>(absl::ToInt64Seconds(r.lease)));
    return absl::OkStatus();
  }());
}

grpc::Status AgentServiceImpl::Heartbeat(grpc::ServerContext* context,
                                         const v1::HeartbeatRequest* request,
                                         v1::HeartbeatResponse* response) {
  return Finish("Heartbeat", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckDevice(*context, request->device_id()));
    ASSIGN_OR_RETURN(HeartbeatResult r, coordinator_->Heartbeat(request->device_id()));
    *response->mutable_lease_expires_at() = ToProto(r.lease_expires_at);
    if (r.assignment.has_value()) *response->mutable_assignment() = *r.assignment;
    return absl::OkStatus();
  }());
}

grpc::Status AgentServiceImpl::FetchBlob(grpc::ServerContext* context,
                                         const v1::FetchBlobRequest* request,
                                         grpc::ServerWriter<v1::FetchBlobResponse>* writer) {
  return Finish("FetchBlob", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::string token, BearerToken(*context));
    ASSIGN_OR_RETURN(std::string device_id, coordinator_->AuthenticateDevice(token));
    if (!IsSha256Hex(request->digest())) {
      return absl::InvalidArgumentError("digest must be 64 lower-case hex characters");
    }
    uint64_t offset = request->offset();
    while (!context->IsCancelled()) {
      uint64_t total = 0;
      ASSIGN_OR_RETURN(std::string chunk, coordinator_->ReadBlob(device_id, request->digest(),
                                                                 offset, kBlobChunkBytes, &total));
      v1::FetchBlobResponse response;
      response.set_offset(offset);
      response.set_total_bytes(total);
      offset += chunk.size();
      *response.mutable_data() = std::move(chunk);
      if (!writer->Write(response)) return absl::OkStatus();  // client went away
      if (offset >= total) return absl::OkStatus();
    }
    return absl::CancelledError("fetch cancelled");
  }());
}

grpc::Status AgentServiceImpl::ReportMetrics(grpc::ServerContext* context,
                                             const v1::ReportMetricsRequest* request,
                                             v1::ReportMetricsResponse* response) {
  return Finish("ReportMetrics", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckDevice(*context, request->device_id()));
    ASSIGN_OR_RETURN(ReportResult r,
                     coordinator_->ReportMetrics(request->device_id(), request->report()));
    response->set_accepted(r.accepted);
    response->set_cancelled(r.cancelled);
    return absl::OkStatus();
  }());
}

grpc::Status AgentServiceImpl::CompleteAssignment(grpc::ServerContext* context,
                                                  const v1::CompleteAssignmentRequest* request,
                                                  v1::CompleteAssignmentResponse*) {
  return Finish("CompleteAssignment", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckDevice(*context, request->device_id()));
    return coordinator_->CompleteAssignment(request->device_id(), request->final_report());
  }());
}

grpc::Status AgentServiceImpl::FailAssignment(grpc::ServerContext* context,
                                              const v1::FailAssignmentRequest* request,
                                              v1::FailAssignmentResponse*) {
  return Finish("FailAssignment", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckDevice(*context, request->device_id()));
    return coordinator_->FailAssignment(request->device_id(), request->assignment_id(),
                                        request->kind(), request->detail());
  }());
}

}  // namespace fleettune::server
