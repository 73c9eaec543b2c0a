// fleettune-agent: the on-device daemon.
//
//   fleettune-agent --config=/etc/fleettune/agent.textproto
//
// Flag parsing and wiring only; the work is Agent (agent/core/agent.h).
#include <google/protobuf/text_format.h>

#include <csignal>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "agent/core/agent.h"
#include "agent/core/capture.h"
#include "agent/probe/probe.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"

ABSL_FLAG(std::string, config, "/etc/fleettune/agent.textproto",
          "Agent configuration (fleettune.v1.AgentConfig, protobuf text format).");
ABSL_FLAG(std::string, capture_outgoing, "",
          "Append every message the agent sends to this file (privacy audits, tests).");
ABSL_FLAG(int, threads, 0, "Engine threads; 0 = the device's cores, at most 4.");

namespace fleettune::agent {
namespace {

std::atomic<bool> g_stop{false};

absl::Status Main() {
  ASSIGN_OR_RETURN(std::string text,
                   engine::ReadFileToString(absl::GetFlag(FLAGS_config), 1 << 20));
  AgentOptions o;
  if (!google::protobuf::TextFormat::ParseFromString(text, &o.config)) {
    return absl::InvalidArgumentError(
        absl::StrCat(absl::GetFlag(FLAGS_config), ": not a valid AgentConfig"));
  }
  if (o.config.coordinator().empty() || o.config.state_dir().empty() ||
      o.config.enrollment_token_file().empty()) {
    return absl::InvalidArgumentError(
        "the config needs coordinator, state_dir and enrollment_token_file");
  }
  ASSIGN_OR_RETURN(std::string token,
                   engine::ReadFileToString(o.config.enrollment_token_file(), 4096));
  o.enrollment_token = std::string(absl::StripAsciiWhitespace(token));
  ASSIGN_OR_RETURN(v1::DeviceProfile probed, ProbeDevice());
  o.profile = ApplyOverride(probed, o.config.profile_override());
  const int threads = absl::GetFlag(FLAGS_threads);
  o.threads = threads > 0 ? threads : std::clamp(o.profile.cores(), 1, 4);
  Agent agent(std::move(o),
              CreateAgentChannel(o.config.coordinator(), absl::GetFlag(FLAGS_capture_outgoing)));
  std::signal(SIGINT, [](int) { g_stop = true; });
  std::signal(SIGTERM, [](int) { g_stop = true; });
  return agent.Run(g_stop);
}

}  // namespace
}  // namespace fleettune::agent

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("The fleettune on-device agent.");
  absl::ParseCommandLine(argc, argv);
  absl::Status status = fleettune::agent::Main();
  if (!status.ok()) {
    std::fprintf(stderr, "fleettune-agent: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
