// SHA-256 through OpenSSL's EVP interface (OpenSSL is the project's one
// crypto library; its digests are hardware accelerated where the CPU allows).
//
//   std::string digest = Sha256Hex(bytes);  // 64 lower-case hex characters
#ifndef FLEETTUNE_SERVER_BASE_SHA256_H_
#define FLEETTUNE_SERVER_BASE_SHA256_H_

#include <string>

#include "absl/strings/string_view.h"

namespace fleettune::server {

std::string Sha256Hex(absl::string_view bytes);

// True for 64 lower-case hex characters.
bool IsSha256Hex(absl::string_view text);

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_BASE_SHA256_H_
