// fleettune-coordinator: the fleet's coordinator process.
//
//   fleettune-coordinator --db=/var/lib/fleettune/coordinator.db
//       --operator_tokens=/etc/fleettune/operator.tokens
//       --enrollment_tokens=/etc/fleettune/enrollment.tokens
//
// Flag parsing only; everything else is CoordinatorServer.
#include <csignal>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/time.h"
#include "engine/base/status_macros.h"
#include "server/grpc/coordinator_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7443", "gRPC address (loopback unless told otherwise).");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Address of the Prometheus /metrics endpoint; empty disables it.");
ABSL_FLAG(std::string, db, "fleettune-coordinator.db", "SQLite database file.");
ABSL_FLAG(std::string, device_classes, "",
          "Device classes in protobuf text format (deploy/device_classes.textproto); "
          "empty = built-in defaults.");
ABSL_FLAG(std::string, operator_tokens, "", "File with operator bearer tokens, one per line.");
ABSL_FLAG(std::string, enrollment_tokens, "", "File with agent enrollment tokens, one per line.");
ABSL_FLAG(int, lease_seconds, 30, "Device lease: devices must heartbeat this often.");

namespace fleettune::server {
namespace {

absl::Status Main() {
  CoordinatorServerOptions o;
  o.listen_address = absl::GetFlag(FLAGS_listen);
  o.metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  o.database_path = absl::GetFlag(FLAGS_db);
  o.device_classes_path = absl::GetFlag(FLAGS_device_classes);
  if (absl::GetFlag(FLAGS_operator_tokens).empty() ||
      absl::GetFlag(FLAGS_enrollment_tokens).empty()) {
    return absl::InvalidArgumentError(
        "--operator_tokens and --enrollment_tokens are required (no anonymous access)");
  }
  ASSIGN_OR_RETURN(o.operator_tokens, TokenSet::FromFile(absl::GetFlag(FLAGS_operator_tokens)));
  ASSIGN_OR_RETURN(o.enrollment_tokens, TokenSet::FromFile(absl::GetFlag(FLAGS_enrollment_tokens)));
  if (absl::GetFlag(FLAGS_lease_seconds) < 1) {
    return absl::InvalidArgumentError("--lease_seconds must be >= 1");
  }
  o.lease = absl::Seconds(absl::GetFlag(FLAGS_lease_seconds));

  // Block the stop signals before threads start so only sigwait sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ASSIGN_OR_RETURN(auto server, CoordinatorServer::Start(std::move(o)));
  std::fprintf(stderr, "fleettune-coordinator: serving on port %d (db %s)\n", server->port(),
               absl::GetFlag(FLAGS_db).c_str());
  int signal = 0;
  sigwait(&signals, &signal);
  std::fprintf(stderr, "fleettune-coordinator: signal %d, shutting down\n", signal);
  server->Shutdown();
  return absl::OkStatus();
}

}  // namespace
}  // namespace fleettune::server

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("The fleettune coordinator.");
  absl::ParseCommandLine(argc, argv);
  absl::Status status = fleettune::server::Main();
  if (!status.ok()) {
    std::fprintf(stderr, "fleettune-coordinator: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
