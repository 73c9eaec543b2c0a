// Bearer-token authentication for the two services.
//
// Operators and enrolling agents present "authorization: Bearer <token>".
// Token files hold one token per line ('#' comments allowed); only SHA-256
// hashes are kept in memory, and comparisons run on hashes, so timing reveals
// nothing about a token's prefix.
#ifndef FLEETTUNE_SERVER_GRPC_AUTH_H_
#define FLEETTUNE_SERVER_GRPC_AUTH_H_

#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"

namespace fleettune::server {

class TokenSet {
 public:
  TokenSet() = default;
  // InvalidArgument for an empty list or a token shorter than 16 characters.
  static absl::StatusOr<TokenSet> FromTokens(const std::vector<std::string>& tokens);
  // NotFound / InvalidArgument with the path.
  static absl::StatusOr<TokenSet> FromFile(const std::string& path);

  bool Contains(const std::string& token) const;

 private:
  absl::flat_hash_set<std::string> hashes_;
};

// The bearer token of a call; Unauthenticated when absent or malformed.
absl::StatusOr<std::string> BearerToken(const grpc::ServerContext& context);

// Unauthenticated unless the call carries a token in `tokens`; `who` names
// the kind of token in the message ("operator", "enrollment").
absl::Status CheckToken(const grpc::ServerContext& context, const TokenSet& tokens,
                        const char* who);

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_GRPC_AUTH_H_
