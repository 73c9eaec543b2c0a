#include "server/grpc/coordinator_server.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "server/store/sqlite_store.h"

namespace fleettune::server {

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    CoordinatorServerOptions options) {
  if (options.database_path.empty()) {
    return absl::InvalidArgumentError("a database path is required");
  }
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  s->options_ = std::move(options);
  const CoordinatorServerOptions& o = s->options_;
  ASSIGN_OR_RETURN(s->store_, OpenSqliteStore(o.database_path));
  if (o.device_classes_path.empty()) {
    s->classes_ = std::make_unique<DeviceClassRegistry>(DeviceClassRegistry::Defaults());
  } else {
    ASSIGN_OR_RETURN(DeviceClassRegistry classes,
                     DeviceClassRegistry::FromFile(o.device_classes_path));
    s->classes_ = std::make_unique<DeviceClassRegistry>(std::move(classes));
  }
  s->compiler_ = std::make_unique<PlanCompiler>();
  s->metrics_ = std::make_unique<CoordinatorMetrics>();

  CoordinatorOptions copts;
  copts.lease = o.lease;
  CoordinatorServer* self = s.get();
  copts.on_change = [self] {
    if (self->coordinator_ != nullptr) self->metrics_->Refresh(*self->coordinator_);
  };
  copts.on_compile = [self](const std::string& cls, absl::Duration d) {
    self->metrics_->ObserveCompile(cls, d);
  };
  ASSIGN_OR_RETURN(s->coordinator_, Coordinator::Create(s->store_.get(), s->classes_.get(),
                                                        s->compiler_.get(), copts));
  s->metrics_->Refresh(*s->coordinator_);

  s->fleet_service_ = std::make_unique<FleetServiceImpl>(s->coordinator_.get(), &o.operator_tokens,
                                                         s->metrics_.get());
  s->agent_service_ = std::make_unique<AgentServiceImpl>(s->coordinator_.get(),
                                                         &o.enrollment_tokens, s->metrics_.get());
  grpc::ServerBuilder builder;
  // TODO(#3): TLS credentials (OpenSSL-backed) once certificates are provisioned.
  builder.AddListeningPort(o.listen_address, grpc::InsecureServerCredentials(), &s->port_);
  builder.SetMaxReceiveMessageSize(o.max_request_bytes);
  builder.RegisterService(s->fleet_service_.get());
  builder.RegisterService(s->agent_service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.listen_address));
  }
  if (!o.metrics_address.empty()) {
    try {
      s->exposer_ = std::make_unique<prometheus::Exposer>(o.metrics_address);
    } catch (const std::exception& e) {
      s->server_->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("cannot serve /metrics on ", o.metrics_address, ": ", e.what()));
    }
    s->exposer_->RegisterCollectable(s->metrics_->registry());
  }
  s->ticker_ = std::thread([self] {
    while (!self->stop_.WaitForNotificationWithTimeout(self->options_.tick)) {
      absl::Status status = self->coordinator_->Tick();
      if (!status.ok()) {
        std::fprintf(stderr, "fleettune-coordinator: housekeeping: %s\n",
                     status.ToString().c_str());
      }
    }
  });
  return s;
}

std::shared_ptr<grpc::Channel> CoordinatorServer::InProcessChannel() {
  return server_->InProcessChannel(grpc::ChannelArguments());
}

void CoordinatorServer::Shutdown() {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  stop_.Notify();
  // Streams (WatchJob, FetchBlob) get two seconds to notice, then are cancelled.
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (ticker_.joinable()) ticker_.join();
  exposer_.reset();
}

void CoordinatorServer::Wait() { server_->Wait(); }

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

}  // namespace fleettune::server
