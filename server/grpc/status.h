// The one place absl::Status becomes grpc::Status (canonical codes map 1:1).
#ifndef FLEETTUNE_SERVER_GRPC_STATUS_H_
#define FLEETTUNE_SERVER_GRPC_STATUS_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"

namespace fleettune::server {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_GRPC_STATUS_H_
