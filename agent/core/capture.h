// A client channel that records every message the agent sends.
//
// For privacy audits and the end-to-end test: each outgoing request is
// appended, serialized, to a capture file as
//   uint32 method-name length, method name, uint32 message length, message
// so a checker can prove no message carries local data or weights.
#ifndef FLEETTUNE_AGENT_CORE_CAPTURE_H_
#define FLEETTUNE_AGENT_CORE_CAPTURE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

namespace fleettune::agent {

// An insecure channel to `target`; with a non-empty `capture_path`, every
// outgoing message is appended to that file.
std::shared_ptr<grpc::Channel> CreateAgentChannel(const std::string& target,
                                                  const std::string& capture_path);

}  // namespace fleettune::agent

#endif  // FLEETTUNE_AGENT_CORE_CAPTURE_H_
