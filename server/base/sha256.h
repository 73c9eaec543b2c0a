// SHA-256 for the coordinator and agent: the engine's (engine/base/sha256.h),
// under the server namespace its callers use.
//
//   std::string digest = Sha256Hex(bytes);  // 64 lower-case hex characters
#ifndef FLEETTUNE_SERVER_BASE_SHA256_H_
#define FLEETTUNE_SERVER_BASE_SHA256_H_

#include "engine/base/sha256.h"

namespace fleettune::server {

using ::fleettune::engine::IsSha256Hex;
using ::fleettune::engine::Sha256Hex;

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_BASE_SHA256_H_
