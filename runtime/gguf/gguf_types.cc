// Names and sizes of GGUF's metadata and tensor types.
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/gguf/gguf_file.h"

namespace spanserve::gguf {
namespace {

struct TypeRow {
  uint32_t type;
  const char* name;
  int64_t block_size;
  int64_t block_bytes;
};
// ggml's type table (block elements, bytes per block); retired ids 4, 5, 31.. are absent.
constexpr TypeRow kTypes[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},
    {3, "Q4_1", 32, 20},      {6, "Q5_0", 32, 22},      {7, "Q5_1", 32, 24},
    {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 40},      {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66},
    {17, "IQ2_XS", 256, 74},  {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},
    {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},  {22, "IQ2_S", 256, 82},
    {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},         {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},        {28, "F64", 1, 8},
    {29, "IQ1_M", 256, 56},   {30, "BF16", 1, 2},
};

const TypeRow* FindType(uint32_t type) {
  for (const TypeRow& row : kTypes) {
    if (row.type == type) return &row;
  }
  return nullptr;
}

}  // namespace

const char* ValueTypeName(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
      return "u8";
    case ValueType::kInt8:
      return "i8";
    case ValueType::kUint16:
      return "u16";
    case ValueType::kInt16:
      return "i16";
    case ValueType::kUint32:
      return "u32";
    case ValueType::kInt32:
      return "i32";
    case ValueType::kFloat32:
      return "f32";
    case ValueType::kBool:
      return "bool";
    case ValueType::kString:
      return "string";
    case ValueType::kArray:
      return "array";
    case ValueType::kUint64:
      return "u64";
    case ValueType::kInt64:
      return "i64";
    case ValueType::kFloat64:
      return "f64";
  }
  return "?";
}

std::string TensorTypeName(TensorType t) {
  const TypeRow* row = FindType(static_cast<uint32_t>(t));
  return row != nullptr ? row->name : absl::StrCat("type ", static_cast<uint32_t>(t));
}

bool GetTypeTraits(uint32_t type, TypeTraits* traits) {
  const TypeRow* row = FindType(type);
  if (row == nullptr) return false;
  traits->block_size = row->block_size;
  traits->block_bytes = row->block_bytes;
  return true;
}

bool Value::is_integer() const {
  switch (type) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kUint16:
    case ValueType::kInt16:
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kUint64:
    case ValueType::kInt64:
      return true;
    case ValueType::kFloat32:
    case ValueType::kBool:
    case ValueType::kString:
    case ValueType::kArray:
    case ValueType::kFloat64:
      return false;
  }
  return false;
}

std::string Value::TypeName() const {
  if (type != ValueType::kArray) return std::string(ValueTypeName(type));
  if (elem_type == ValueType::kArray) {
    // Nested arrays may differ; name the first one's type.
    return absl::StrCat("array[", arrays.empty() ? "array" : arrays[0].TypeName(), "]");
  }
  return absl::StrCat("array[", ValueTypeName(elem_type), "]");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (const int64_t d : ne) n *= d;
  return n;
}

std::vector<int64_t> TensorInfo::TorchShape() const { return {ne.rbegin(), ne.rend()}; }

}  // namespace spanserve::gguf
