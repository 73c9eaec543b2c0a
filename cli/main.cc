// fleettune: the operator CLI of the fleettune coordinator.
//
//   fleettune submit --name=mnist-ft --dataset=fashion-mnist
//       --layers=784,256,128,10 --classes=rpi4:2,x86-avx2:1
//   fleettune watch JOB_ID
//
// Parses argv, connects and dispatches; the logic is in commands.h. Run
// `fleettune help` for every command and flag. Exit status: 0 success, 1 a
// call failed or the watched job did not succeed, 2 a bad command line.
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "grpcpp/grpcpp.h"
#include "proto/fleettune/v1/fleet_service.grpc.pb.h"

namespace {

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

int TerminalColumns() {
  struct winsize size;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) != 0) return 0;
  return size.ws_col;
}

bool StdoutIsTerminal() {
  const char* term = std::getenv("TERM");
  return isatty(STDOUT_FILENO) && term != nullptr && std::string(term) != "dumb";
}

}  // namespace

int main(int argc, char** argv) {
  namespace cli = fleettune::cli;
  const std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<cli::CommandLine> line = cli::ParseCommandLine(args);
  if (!line.ok()) {
    std::cerr << "fleettune: " << line.status().message() << "\n\n" << cli::Usage();
    return kExitUsage;
  }
  if (line->command == cli::Command::kHelp) {
    std::cout << cli::Usage();
    return 0;
  }
  const char* env_token = std::getenv("FLEETTUNE_TOKEN");
  absl::StatusOr<cli::Invocation> invocation =
      cli::BuildInvocation(*line, env_token == nullptr ? "" : env_token, absl::Now());
  if (!invocation.ok()) {
    std::cerr << "fleettune: " << invocation.status().message() << "\n";
    return kExitUsage;
  }

  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(cli::kMaxResponseBytes);
  // TODO(#3): TLS channel credentials once the coordinator serves TLS.
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
      invocation->global.server, grpc::InsecureChannelCredentials(), channel_args);
  std::unique_ptr<fleettune::v1::FleetService::Stub> stub =
      fleettune::v1::FleetService::NewStub(channel);

  cli::CliOptions options;
  options.global = invocation->global;
  options.redraw_in_place = StdoutIsTerminal();
  options.terminal_columns = options.redraw_in_place ? TerminalColumns() : 0;
  cli::Cli runner(stub.get(), options, &std::cout, &std::cerr);
  const absl::Status status = runner.Run(*invocation);
  std::cout.flush();
  if (!status.ok()) {
    std::cerr << "fleettune: " << status.message() << "\n";
    return kExitFailed;
  }
  return 0;
}
