// The coordinator process: store, device classes, compiler, Coordinator, the
// two gRPC services, /metrics and the housekeeping ticker, wired together.
//
//   CoordinatorServerOptions o;
//   o.database_path = "/var/lib/fleettune/coordinator.db";
//   o.operator_tokens = ...; o.enrollment_tokens = ...;
//   ASSIGN_OR_RETURN(auto server, CoordinatorServer::Start(std::move(o)));
//   server->Wait();   // until Shutdown()
//
// Listens on loopback unless told otherwise. Thread-safe.
#ifndef FLEETTUNE_SERVER_GRPC_COORDINATOR_SERVER_H_
#define FLEETTUNE_SERVER_GRPC_COORDINATOR_SERVER_H_

#include <grpcpp/grpcpp.h>
#include <prometheus/exposer.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/compiler/device_classes.h"
#include "server/compiler/plan_compiler.h"
#include "server/coordinator/coordinator.h"
#include "server/grpc/auth.h"
#include "server/grpc/metrics.h"
#include "server/grpc/services.h"
#include "server/store/store.h"

namespace fleettune::server {

struct CoordinatorServerOptions {
  // host:port for gRPC; port 0 picks a free port (see port()).
  std::string listen_address = "127.0.0.1:7443";
  // host:port for Prometheus' /metrics; empty = not exported.
  std::string metrics_address = "127.0.0.1:9464";
  // SQLite database file (created if missing); ":memory:" for tests.
  std::string database_path;
  // Device classes in protobuf text format; empty = built-in defaults.
  std::string device_classes_path;
  TokenSet operator_tokens;
  TokenSet enrollment_tokens;
  absl::Duration lease = absl::Seconds(30);
  // How often leases and deadlines are checked.
  absl::Duration tick = absl::Seconds(1);
  // Largest request accepted (job specs carry base weights).
  int max_request_bytes = 300 << 20;
};

class CoordinatorServer {
 public:
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(CoordinatorServerOptions options);
  ~CoordinatorServer();

  // The bound gRPC port.
  int port() const { return port_; }
  // A channel to this server that bypasses the network (tests).
  std::shared_ptr<grpc::Channel> InProcessChannel();
  Coordinator& coordinator() { return *coordinator_; }
  CoordinatorMetrics& metrics() { return *metrics_; }

  // Stops accepting calls, ends streams, stops the ticker. Idempotent.
  void Shutdown();
  // Blocks until Shutdown().
  void Wait();

 private:
  CoordinatorServer() = default;

  CoordinatorServerOptions options_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<DeviceClassRegistry> classes_;
  std::unique_ptr<PlanCompiler> compiler_;
  std::unique_ptr<CoordinatorMetrics> metrics_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<FleetServiceImpl> fleet_service_;
  std::unique_ptr<AgentServiceImpl> agent_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::thread ticker_;
  absl::Notification stop_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ = false;
  int port_ = 0;
};

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_GRPC_COORDINATOR_SERVER_H_
