// The `fleettune` operator CLI: command-line parsing and the subcommands.
//
// main.cc runs three steps; each is testable without a network:
//   1. ParseCommandLine: which command, which flags, which arguments (syntax
//      only). An error prints the usage; exit status 2.
//   2. BuildInvocation: flag values into typed requests, reading --job-file
//      and --weights. An error names the flag; exit status 2.
//   3. Cli::Run: one FleetService call (or a WatchJob stream) and its output.
//      An error reads "UNAUTHENTICATED: missing or bad operator token ..."
//      for RPC failures; exit status 1.
//
//   ASSIGN_OR_RETURN(CommandLine line, ParseCommandLine(args));
//   ASSIGN_OR_RETURN(Invocation invocation, BuildInvocation(line, env_token, absl::Now()));
//   CliOptions options;
//   options.global = invocation.global;
//   Cli cli(stub.get(), options, &std::cout, &std::cerr);
//   RETURN_IF_ERROR(cli.Run(invocation));
//
// Thread-compatible: a Cli runs one command at a time.
#ifndef FLEETTUNE_CLI_COMMANDS_H_
#define FLEETTUNE_CLI_COMMANDS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/fleettune/v1/fleet_service.grpc.pb.h"
#include "proto/fleettune/v1/fleet_service.pb.h"

namespace fleettune::cli {

// Limits on what the CLI reads from disk and accepts from the coordinator.
inline constexpr uint64_t kMaxWeightsBytes = uint64_t{64} << 20;
inline constexpr uint64_t kMaxJobFileBytes = uint64_t{1} << 20;
inline constexpr int kMaxResponseBytes = 64 << 20;

// ---------------------------------------------------------------------------
// Step 1: syntax.

enum class Command {
  kHelp,
  kSubmit,
  kList,
  kGet,
  kWatch,
  kCancel,
  kDevices,
  kClasses,
  kCompile,
  kSearch
};

struct CommandLine {
  Command command = Command::kHelp;
  // Flags by name without the dashes ("weight-decay"; "weight_decay" is
  // accepted and normalized). The last occurrence wins. Boolean flags hold
  // "true" or "false".
  std::map<std::string, std::string> global_flags;  // server, token, json, timeout
  std::map<std::string, std::string> flags;         // the command's own
  std::vector<std::string> args;                    // positional arguments
};

// Splits argv (without argv[0]) into the command, its flags and arguments.
// Global flags may come before or after the command; "--name value" and
// "--name=value" both work; "--" ends the flags. -h, --help or `help`
// anywhere gives Command::kHelp. InvalidArgument for an unknown command or
// flag, a flag without its value, or a wrong number of arguments.
absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args);

// The full usage text, generated from the same table ParseCommandLine reads.
std::string Usage();

// ---------------------------------------------------------------------------
// Step 2: values.

struct GlobalOptions {
  std::string server = "localhost:7443";
  std::string token;  // sent as "authorization: Bearer <token>" when non-empty
  bool json = false;
  absl::Duration timeout = absl::Seconds(30);  // deadline of each unary RPC
};

// A command with its inputs checked and converted; only the fields the
// command uses are set.
struct Invocation {
  Command command = Command::kHelp;
  GlobalOptions global;
  v1::JobSpec spec;                                  // submit
  std::vector<v1::JobState> states;                  // list (empty = all)
  std::string job_id;                                // get, watch, cancel
  std::string device_class;                          // devices (empty = all)
  std::map<std::string, std::string> compile_flags;  // compile (checked by RunCompile)
  std::map<std::string, std::string> search_flags;   // search (checked by RunSearch)
};

// Checks and converts the flag values of `line`. `env_token` is
// $FLEETTUNE_TOKEN, used when --token is absent; `now` anchors a relative
// --deadline. InvalidArgument naming the flag for a bad value; the file's
// error (NotFound, InvalidArgument, ...) prefixed with the flag for an
// unreadable --job-file or --weights.
absl::StatusOr<Invocation> BuildInvocation(const CommandLine& line, absl::string_view env_token,
                                           absl::Time now);

// The JobSpec `submit` sends. Without --job-file the spec starts from the
// defaults Usage() lists; with it, from the file (protobuf text format of
// fleettune.v1.JobSpec), and each flag given overrides its field. Then checks
// that name, dataset, classes (and layers for an MLP) are present and that
// --min-devices does not exceed the devices asked for.
absl::StatusOr<v1::JobSpec> BuildJobSpec(const std::map<std::string, std::string>& flags,
                                         absl::Time now);

// "running,failed" -> {JOB_STATE_RUNNING, JOB_STATE_FAILED}; case-insensitive.
// InvalidArgument naming --state for an unknown state.
absl::StatusOr<std::vector<v1::JobState>> ParseJobStates(absl::string_view text);

// ---------------------------------------------------------------------------
// Step 3: RPCs.

// The one place a gRPC status becomes an absl::Status: same code, message
// "CODE: server message", plus a hint for UNAUTHENTICATED (the token flags),
// UNAVAILABLE (the server address) and DEADLINE_EXCEEDED (--timeout). The
// server's message is sanitized for the terminal.
absl::Status FromGrpcStatus(const grpc::Status& status, const GlobalOptions& options);

struct CliOptions {
  GlobalOptions global;
  // watch: stdout is a terminal, so each update redraws the previous one in
  // place with ANSI cursor movement instead of printing below it.
  bool redraw_in_place = false;
  // Terminal width, to count wrapped lines when redrawing; 0 = unknown.
  int terminal_columns = 0;
  // For ages and deadlines in tables.
  std::function<absl::Time()> clock = [] { return absl::Now(); };
};

// Runs subcommands against a FleetService stub, writing results to `out`
// (tables, or one JSON object per line with --json) and hints to `err`.
// Every method returns the RPC's error through FromGrpcStatus. The stub and
// streams are not owned and must outlive the Cli.
class Cli {
 public:
  Cli(v1::FleetService::StubInterface* stub, CliOptions options, std::ostream* out,
      std::ostream* err);

  // Dispatches to the method for invocation.command. kHelp prints Usage().
  absl::Status Run(const Invocation& invocation);

  // CreateJob; prints the job with its per-class plans.
  absl::Status Submit(const v1::JobSpec& spec);
  // ListJobs, newest first; `states` empty = every state.
  absl::Status List(const std::vector<v1::JobState>& states);
  absl::Status Get(const std::string& job_id);
  // Streams WatchJob and prints every update until the job ends. OK when it
  // succeeded; Aborted when it failed and Cancelled when it was cancelled
  // (message "job ID failed: detail"); Unavailable when the stream ends
  // while the job is still pending or running.
  absl::Status Watch(const std::string& job_id);
  absl::Status Cancel(const std::string& job_id);
  // ListDevices; `device_class` empty = every class.
  absl::Status Devices(const std::string& device_class);
  absl::Status Classes();

 private:
  // Token metadata and, for unary calls, the --timeout deadline.
  void PrepareContext(grpc::ClientContext* context, bool unary) const;
  absl::Status PrintJson(const google::protobuf::Message& message);
  void DrawWatchFrame(const v1::Job& job, int* lines_on_screen);

  v1::FleetService::StubInterface* stub_;
  CliOptions options_;
  std::ostream* out_;
  std::ostream* err_;
};

}  // namespace fleettune::cli

#endif  // FLEETTUNE_CLI_COMMANDS_H_
