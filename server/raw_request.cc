#include "server/raw_request.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/text.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"

namespace spanserve::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::internal::WireFormatLite;

// Nested messages deeper than this are not searched (ours nest three deep).
constexpr int kMaxDepth = 16;

// The path of the first string field of `bytes` (a `type` message) that is not UTF-8.
std::optional<std::string> FindInvalidUtf8(const Descriptor& type, const std::string& bytes,
                                           const std::string& prefix, int depth) {
  if (depth > kMaxDepth) return std::nullopt;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  std::vector<std::pair<int, int>> seen;  // field number, occurrences so far
  for (;;) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) return std::nullopt;
    const FieldDescriptor* field = type.FindFieldByNumber(WireFormatLite::GetTagFieldNumber(tag));
    const bool nested =
        field != nullptr &&
        (field->type() == FieldDescriptor::TYPE_STRING ||
         field->type() == FieldDescriptor::TYPE_MESSAGE) &&
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    if (!nested) {
      if (!WireFormatLite::SkipField(&in, tag)) return std::nullopt;
      continue;
    }
    uint32_t length = 0;
    std::string payload;
    if (!in.ReadVarint32(&length) || !in.ReadString(&payload, static_cast<int>(length))) {
      return std::nullopt;
    }
    std::string name = prefix + field->name();
    if (field->is_repeated()) {
      int index = 0;
      for (auto& [number, count] : seen) {
        if (number == field->number()) index = count++;
      }
      if (index == 0) seen.emplace_back(field->number(), 1);
      absl::StrAppend(&name, "[", index, "]");
    }
    if (field->type() == FieldDescriptor::TYPE_STRING) {
      if (!IsValidUtf8(payload)) return name;
    } else if (auto bad = FindInvalidUtf8(*field->message_type(), payload, name + ".", depth + 1)) {
      return bad;
    }
  }
}

}  // namespace

absl::Status ParseRequest(const grpc::ByteBuffer& raw, google::protobuf::Message* out) {
  std::vector<grpc::Slice> slices;
  if (!raw.Dump(&slices).ok()) return absl::InvalidArgumentError("unreadable request bytes");
  std::string bytes;
  bytes.reserve(raw.Length());
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  if (out->ParseFromString(bytes)) return absl::OkStatus();
  const Descriptor& type = *out->GetDescriptor();
  if (std::optional<std::string> field = FindInvalidUtf8(type, bytes, "", 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        *field, ": is not valid UTF-8 (string fields must be; send token ids for other bytes)"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("the request is not a valid ", type.full_name(), " message"));
}

}  // namespace spanserve::server
