// Thin gRPC adapters over Coordinator: authenticate, translate, delegate.
//
// Each handler checks the caller's token, calls one Coordinator method and
// converts its Status in one place (status.h), recording the outcome in
// /metrics. No scheduling or validation logic lives here.
#ifndef FLEETTUNE_SERVER_GRPC_SERVICES_H_
#define FLEETTUNE_SERVER_GRPC_SERVICES_H_

#include <grpcpp/grpcpp.h>

#include "proto/fleettune/v1/agent_service.grpc.pb.h"
#include "proto/fleettune/v1/fleet_service.grpc.pb.h"
#include "server/coordinator/coordinator.h"
#include "server/grpc/auth.h"
#include "server/grpc/metrics.h"

namespace fleettune::server {

// Largest FetchBlob chunk.
inline constexpr uint64_t kBlobChunkBytes = 256 * 1024;

class FleetServiceImpl final : public v1::FleetService::Service {
 public:
  // `metrics` may be null. Pointers must outlive the service.
  FleetServiceImpl(Coordinator* coordinator, const TokenSet* operator_tokens,
                   CoordinatorMetrics* metrics)
      : coordinator_(coordinator), tokens_(operator_tokens), metrics_(metrics) {}

  grpc::Status CreateJob(grpc::ServerContext* context, const v1::CreateJobRequest* request,
                         v1::CreateJobResponse* response) override;
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::GetJobResponse* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::WatchJobResponse>* writer) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                         v1::CancelJobResponse* response) override;
  grpc::Status ListDevices(grpc::ServerContext* context, const v1::ListDevicesRequest* request,
                           v1::ListDevicesResponse* response) override;
  grpc::Status ListDeviceClasses(grpc::ServerContext* context,
                                 const v1::ListDeviceClassesRequest* request,
                                 v1::ListDeviceClassesResponse* response) override;

 private:
  grpc::Status Finish(const char* method, const absl::Status& status);

  Coordinator* coordinator_;
  const TokenSet* tokens_;
  CoordinatorMetrics* metrics_;
};

class AgentServiceImpl final : public v1::AgentService::Service {
 public:
  AgentServiceImpl(Coordinator* coordinator, const TokenSet* enrollment_tokens,
                   CoordinatorMetrics* metrics)
      : coordinator_(coordinator), tokens_(enrollment_tokens), metrics_(metrics) {}

  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status FetchBlob(grpc::ServerContext* context, const v1::FetchBlobRequest* request,
                         grpc::ServerWriter<v1::FetchBlobResponse>* writer) override;
  grpc::Status ReportMetrics(grpc::ServerContext* context, const v1::ReportMetricsRequest* request,
                             v1::ReportMetricsResponse* response) override;
  grpc::Status CompleteAssignment(grpc::ServerContext* context,
                                  const v1::CompleteAssignmentRequest* request,
                                  v1::CompleteAssignmentResponse* response) override;
  grpc::Status FailAssignment(grpc::ServerContext* context,
                              const v1::FailAssignmentRequest* request,
                              v1::FailAssignmentResponse* response) override;

 private:
  // The device the call's token belongs to, which must be `device_id`.
  absl::Status CheckDevice(const grpc::ServerContext& context, const std::string& device_id);
  grpc::Status Finish(const char* method, const absl::Status& status);

  Coordinator* coordinator_;
  const TokenSet* tokens_;
  CoordinatorMetrics* metrics_;
};

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_GRPC_SERVICES_H_
