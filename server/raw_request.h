// Request messages parsed by the service itself rather than by gRPC: a message gRPC fails
// to parse (above all a string field holding invalid UTF-8, which proto3 refuses) would
// answer UNIMPLEMENTED with an empty message; parsed here it answers INVALID_ARGUMENT
// naming the field, as every other bad field does.
#pragma once

#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace spanserve::server {

// Parses `raw` into *out. INVALID_ARGUMENT naming the first string field (e.g.
// "prompt.text", "continuations[2].text") that is not UTF-8, or saying the bytes are not a
// message of out's type.
absl::Status ParseRequest(const grpc::ByteBuffer& raw, google::protobuf::Message* out);

}  // namespace spanserve::server
