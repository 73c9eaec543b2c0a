// The on-device agent: registers, heartbeats, takes assignments, runs them
// with the embedded engine on local data, and reports metrics only.
//
//   AgentOptions o;  o.config = config;  o.profile = ApplyOverride(probed, ...);
//   o.enrollment_token = token;
//   Agent agent(std::move(o), CreateAgentChannel(config.coordinator(), ""));
//   std::atomic<bool> stop{false};
//   RETURN_IF_ERROR(agent.Run(stop));   // until stop is set
//
// Resilience: the registration (device id and token) is kept in the state
// directory, so a restarted agent resumes as the same device and picks its
// assignment up from the last checkpoint. While the coordinator is down,
// calls are retried with capped exponential backoff and training carries on;
// a finished result is kept on disk until the coordinator has it.
// A failing assignment (missing or bad data, a plan over budget) is reported
// with its reason and the agent stays up. With `inference_socket` set, the
// newest personalized model answers local requests on that Unix socket
// (agent/inference); it never leaves the device.
#ifndef FLEETTUNE_AGENT_CORE_AGENT_H_
#define FLEETTUNE_AGENT_CORE_AGENT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/inference/classifier.h"
#include "agent/inference/inference_server.h"
#include "proto/fleettune/v1/agent_config.pb.h"
#include "proto/fleettune/v1/agent_service.grpc.pb.h"

namespace fleettune::agent {

struct AgentOptions {
  v1::AgentConfig config;
  v1::DeviceProfile profile;  // probed, with the config's overrides applied
  std::string enrollment_token;
  int threads = 1;
  absl::Duration max_backoff = absl::Seconds(5);
  absl::Duration rpc_timeout = absl::Seconds(10);
};

class Agent {
 public:
  Agent(AgentOptions options, std::shared_ptr<grpc::Channel> channel);
  ~Agent();

  // Serves until `stop` becomes true. Returns an error only for problems a
  // retry cannot fix (an unusable state directory).
  absl::Status Run(const std::atomic<bool>& stop);

  // For tests and logs.
  std::string device_id() const;

 private:
  struct Registration {
    std::string device_id;
    std::string token;
  };

  absl::Status LoadRegistration();
  absl::Status Register();
  // Sets the RPC deadline and the device's bearer token.
  void Prepare(grpc::ClientContext* ctx) const;
  // Repeats `call` with capped backoff while the coordinator is unreachable.
  void RetryWhileUnavailable(const std::function<grpc::Status()>& call);
  void StartWork(const v1::Assignment& assignment);
  void Work(v1::Assignment assignment);
  // Downloads a blob into the state directory (resuming a partial file) and
  // verifies its SHA-256; returns its bytes.
  absl::StatusOr<std::string> FetchBlob(const std::string& digest);
  void Report(const v1::MetricsReport& report);
  void Finish(const v1::Assignment& assignment, const v1::MetricsReport& report);
  void Fail(const v1::Assignment& assignment, v1::FailureKind kind, const std::string& detail);
  // Sleeps `d` unless stop is requested first.
  void Sleep(absl::Duration d);
  void Log(const std::string& line) const;
  // Serves local inference with the newest personalized model, if configured.
  absl::Status StartInference();
  // Loads the personalized weights of `job_id` as the model local inference uses.
  void UsePersonalizedModel(const std::string& job_id);

  const AgentOptions options_;
  std::unique_ptr<v1::AgentService::Stub> stub_;
  const std::atomic<bool>* stop_ = nullptr;

  mutable absl::Mutex mu_;
  std::optional<Registration> registration_ ABSL_GUARDED_BY(mu_);
  std::string running_assignment_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> cancel_work_{false};
  std::atomic<bool> work_done_{true};
  std::thread worker_;
  std::unique_ptr<InferenceServer> inference_;
  std::shared_ptr<const Classifier> classifier_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fleettune::agent

#endif  // FLEETTUNE_AGENT_CORE_AGENT_H_
