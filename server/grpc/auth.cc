#include "server/grpc/auth.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "server/base/sha256.h"

namespace fleettune::server {

absl::StatusOr<TokenSet> TokenSet::FromTokens(const std::vector<std::string>& tokens) {
  if (tokens.empty()) return absl::InvalidArgumentError("no tokens given");
  TokenSet set;
  for (const std::string& t : tokens) {
    if (t.size() < 16) {
      return absl::InvalidArgumentError("tokens must be at least 16 characters long");
    }
    set.hashes_.insert(Sha256Hex(t));
  }
  return set;
}

absl::StatusOr<TokenSet> TokenSet::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, engine::ReadFileToString(path, 1 << 20));
  std::vector<std::string> tokens;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    tokens.emplace_back(line);
  }
  absl::StatusOr<TokenSet> set = FromTokens(tokens);
  if (!set.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", set.status().message()));
  }
  return set;
}

bool TokenSet::Contains(const std::string& token) const {
  return hashes_.contains(Sha256Hex(token));
}

absl::StatusOr<std::string> BearerToken(const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::StartsWith(value, "Bearer ") || value.size() <= 7) {
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  }
  return std::string(value.substr(7));
}

absl::Status CheckToken(const grpc::ServerContext& context, const TokenSet& tokens,
                        const char* who) {
  absl::StatusOr<std::string> token = BearerToken(context);
  if (!token.ok()) {
    return absl::UnauthenticatedError(
        absl::StrCat(token.status().message(), " (", who, " token required)"));
  }
  if (!tokens.Contains(*token)) {
    return absl::UnauthenticatedError(absl::StrCat("bad ", who, " token"));
  }
  return absl::OkStatus();
}

}  // namespace fleettune::server
