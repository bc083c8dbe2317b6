// The one place where an internal absl::Status becomes a grpc::Status (DESIGN.md §2).
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace spanserve::server {

// Same canonical code, same message. Every handler reports errors through this.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace spanserve::server
