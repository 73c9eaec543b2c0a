// Random identifiers and secrets from OpenSSL's CSPRNG, and protobuf
// timestamp conversions.
#ifndef FLEETTUNE_SERVER_BASE_IDS_H_
#define FLEETTUNE_SERVER_BASE_IDS_H_

#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"

namespace fleettune::server {

// `prefix` + `bytes` random bytes in hex, e.g. RandomId("job-", 6) = "job-3fa9c01b22e4".
std::string RandomId(absl::string_view prefix, int bytes);

google::protobuf::Timestamp ToProto(absl::Time t);
absl::Time FromProto(const google::protobuf::Timestamp& t);

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_BASE_IDS_H_
