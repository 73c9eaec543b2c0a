#include "engine/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::io {
namespace {

// Tensor bytes are copied with memcpy; every target fleettune runs on (x86-64, AArch64) is
// little-endian like the format.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes little-endian");

// nlohmann/json (Debian's nlohmann-json3-dev) parses the header: it is header-only, so it adds no
// library to link on devices; it is widely used and fuzzed upstream; and its parser keeps its
// own stack, so a deeply nested hostile header cannot overflow ours. It reports parse positions
// only through exceptions, which this file catches at the two calls that may throw (parse and
// dump of a tensor name); none escapes.
using Json = nlohmann::json;

// The reference implementation's limit; real headers are kilobytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr char kMetadataKey[] = "__metadata__";

// The element types a file may hold that fleettune can read.
enum class FileDType { kF32, kF64, kI32, kI64 };

struct FileDTypeInfo {
  FileDType dtype;
  const char* name;
  uint64_t size;
};

constexpr FileDTypeInfo kFileDTypes[] = {
    {FileDType::kF32, "F32", 4},
    {FileDType::kF64, "F64", 8},
    {FileDType::kI32, "I32", 4},
    {FileDType::kI64, "I64", 8},
};

// One header entry, checked against the data section's size.
struct Entry {
  std::string name;
  FileDTypeInfo dtype;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// "tensor 'name'", escaped so that a hostile name cannot garble a log line.
std::string TensorLabel(absl::string_view name) {
  return absl::StrCat("tensor '", absl::Utf8SafeCHexEscape(name), "'");
}

std::string RangeString(uint64_t begin, uint64_t end) {
  return absl::StrCat("[", begin, ", ", end, ")");
}

absl::Status WithPrefix(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, ": ", status.message()));
}

// Parses the JSON header; InvalidArgument unless it is an object without duplicate keys
// (nlohmann would silently keep the last of two tensors with one name).
absl::StatusOr<Json> ParseHeaderJson(absl::string_view text) {
  std::set<std::string> seen;
  std::string duplicate;
  bool has_duplicate = false;
  const Json::parser_callback_t on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (depth == 1 && event == Json::parse_event_t::key && parsed.is_string()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second && !has_duplicate) {
        has_duplicate = true;
        duplicate = key;
      }
    }
    return true;
  };
  Json header;
  try {
    header = Json::parse(text.begin(), text.end(), on_event);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("header is a JSON ", header.type_name(), ", not an object"));
  }
  if (has_duplicate) {
    return absl::InvalidArgumentError(
        absl::StrCat(TensorLabel(duplicate), " appears more than once in the header"));
  }
  return header;
}

absl::Status CheckMetadata(const Json& metadata) {
  if (!metadata.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kMetadataKey, " is a JSON ", metadata.type_name(), ", not an object"));
  }
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(kMetadataKey, " value for '",
                                                     absl::Utf8SafeCHexEscape(key), "' is a ",
                                                     value.type_name(), ", not a string"));
    }
  }
  return absl::OkStatus();
}

// A short description of a JSON value for error messages. Containers are not serialized: dump()
// recurses, so a deeply nested hostile value could overflow the stack.
std::string Describe(const Json& value) {
  if (value.is_structured()) return absl::StrCat("a JSON ", value.type_name());
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 40) text = absl::StrCat(text.substr(0, 40), "...");
  return text;
}

// Reads a non-negative JSON integer that fits in int64 (offsets and dimensions both do).
absl::StatusOr<uint64_t> GetCount(const Json& value, absl::string_view label,
                                  absl::string_view what) {
  if (!value.is_number_unsigned() ||
      value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": ", what, " is ", Describe(value), ", not an integer in [0, 2^63)"));
  }
  return value.get<uint64_t>();
}

absl::StatusOr<Entry> ParseEntry(const std::string& name, const Json& value, uint64_t data_size) {
  const std::string label = TensorLabel(name);
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": entry is a JSON ", value.type_name(), ", not an object"));
  }
  Entry entry;
  entry.name = name;

  const auto dtype_it = value.find("dtype");
  if (dtype_it == value.end()) return absl::InvalidArgumentError(label + ": missing \"dtype\"");
  if (!dtype_it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": dtype is ", Describe(*dtype_it), ", not a string"));
  }
  const auto& dtype_name = dtype_it->get_ref<const std::string&>();
  const auto* known = std::find_if(std::begin(kFileDTypes), std::end(kFileDTypes),
                                   [&](const FileDTypeInfo& d) { return dtype_name == d.name; });
  if (known == std::end(kFileDTypes)) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": unsupported dtype ",
                                                   absl::Utf8SafeCHexEscape(dtype_name),
                                                   " (fleettune reads F32, F64, I32 and I64)"));
  }
  entry.dtype = *known;

  const auto shape_it = value.find("shape");
  if (shape_it == value.end()) return absl::InvalidArgumentError(label + ": missing \"shape\"");
  if (!shape_it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": shape is a JSON ", shape_it->type_name(), ", not an array"));
  }
  for (size_t i = 0; i < shape_it->size(); ++i) {
    ASSIGN_OR_RETURN(uint64_t dim, GetCount((*shape_it)[i], label, absl::StrCat("shape[", i, "]")));
    entry.shape.push_back(static_cast<int64_t>(dim));
  }
  RETURN_IF_ERROR(WithPrefix(ValidateShape(entry.shape), label));

  const auto offsets_it = value.find("data_offsets");
  if (offsets_it == value.end()) {
    return absl::InvalidArgumentError(label + ": missing \"data_offsets\"");
  }
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": data_offsets is ", Describe(*offsets_it), ", not an array [begin, end]"));
  }
  ASSIGN_OR_RETURN(entry.begin, GetCount((*offsets_it)[0], label, "data_offsets[0]"));
  ASSIGN_OR_RETURN(entry.end, GetCount((*offsets_it)[1], label, "data_offsets[1]"));
  if (entry.begin > entry.end) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": data_offsets [", entry.begin, ", ",
                                                   entry.end, "] end before they begin"));
  }
  if (entry.end > data_size) {
    return absl::DataLossError(absl::StrCat(label, ": bytes ", RangeString(entry.begin, entry.end),
                                            " run past the end of the ", data_size,
                                            "-byte data section (truncated file?)"));
  }
  // ValidateShape caps elements at 2^34, so the product cannot overflow.
  const uint64_t want = static_cast<uint64_t>(NumElements(entry.shape)) * entry.dtype.size;
  if (entry.end - entry.begin != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": data_offsets ", RangeString(entry.begin, entry.end), " hold ",
                     entry.end - entry.begin, " bytes but ", entry.dtype.name,
                     ShapeToString(entry.shape), " needs ", want));
  }
  return entry;
}

// InvalidArgument unless the entries' byte ranges tile [0, data_size) without overlap or gap.
absl::Status CheckLayout(std::vector<const Entry*> entries, uint64_t data_size) {
  std::sort(entries.begin(), entries.end(), [](const Entry* a, const Entry* b) {
    return std::tie(a->begin, a->end) < std::tie(b->begin, b->end);
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry* entry : entries) {
    if (entry->begin < covered) {
      return absl::InvalidArgumentError(absl::StrCat(
          TensorLabel(entry->name), ": bytes ", RangeString(entry->begin, entry->end), " overlap ",
          TensorLabel(previous->name), " at ", RangeString(previous->begin, previous->end)));
    }
    if (entry->begin > covered) {
      return absl::InvalidArgumentError(
          absl::StrCat("data bytes ", RangeString(covered, entry->begin), " before ",
                       TensorLabel(entry->name), " belong to no tensor"));
    }
    covered = entry->end;
    previous = entry;
  }
  if (covered != data_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("data bytes ", RangeString(covered, data_size), " after ",
                     previous ? TensorLabel(previous->name) : "the header (which lists no tensors)",
                     " belong to no tensor"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Decode(const Entry& entry, absl::string_view data) {
  const char* src = data.data() + entry.begin;
  switch (entry.dtype.dtype) {
    case FileDType::kF32: {
      Tensor t(DType::kF32, entry.shape);
      std::memcpy(t.raw(), src, t.bytes());
      return t;
    }
    case FileDType::kI32: {
      Tensor t(DType::kI32, entry.shape);
      std::memcpy(t.raw(), src, t.bytes());
      return t;
    }
    case FileDType::kI64: {
      Tensor t(DType::kI32, entry.shape);
      int32_t* out = t.i32();
      for (int64_t i = 0; i < t.num_elements(); ++i) {
        int64_t v;
        std::memcpy(&v, src + i * sizeof(v), sizeof(v));
        if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
          return absl::InvalidArgumentError(absl::StrCat(TensorLabel(entry.name), ": I64 value ", v,
                                                         " at index ", i, " does not fit in i32"));
        }
        out[i] = static_cast<int32_t>(v);
      }
      return t;
    }
    case FileDType::kF64: {
      Tensor t(DType::kF32, entry.shape);
      float* out = t.f32();
      for (int64_t i = 0; i < t.num_elements(); ++i) {
        double v;
        std::memcpy(&v, src + i * sizeof(v), sizeof(v));
        // Converting a finite double beyond FLT_MAX to float is undefined behaviour.
        if (std::isfinite(v) && std::fabs(v) > FLT_MAX) {
          return absl::InvalidArgumentError(absl::StrCat(TensorLabel(entry.name), ": F64 value ", v,
                                                         " at index ", i, " does not fit in f32"));
        }
        out[i] = static_cast<float>(v);
      }
      return t;
    }
  }
  return absl::InternalError("unreachable dtype");
}

// InvalidArgument if nlohmann cannot encode `name` (it must be valid UTF-8).
absl::Status CheckNameEncodes(const std::string& name) {
  try {
    (void)Json(name).dump();
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", absl::CHexEscape(name), "': name is not valid UTF-8"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::map<std::string, Tensor>> ParseSafetensors(absl::string_view bytes) {
  if (bytes.size() < 8) {
    return absl::DataLossError(
        absl::StrCat("file has ", bytes.size(), " bytes, fewer than the 8-byte header length"));
  }
  uint64_t header_size;
  std::memcpy(&header_size, bytes.data(), sizeof(header_size));
  if (header_size > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("header length ", header_size, " exceeds the limit of ", kMaxHeaderBytes));
  }
  if (header_size > bytes.size() - 8) {
    return absl::DataLossError(absl::StrCat("header length ", header_size, " exceeds the ",
                                            bytes.size() - 8, " bytes after the length field"));
  }
  ASSIGN_OR_RETURN(Json header, ParseHeaderJson(bytes.substr(8, header_size)));
  const absl::string_view data = bytes.substr(8 + header_size);

  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      RETURN_IF_ERROR(CheckMetadata(value));
      continue;
    }
    ASSIGN_OR_RETURN(Entry entry, ParseEntry(name, value, data.size()));
    entries.push_back(std::move(entry));
  }
  std::vector<const Entry*> layout;
  for (const Entry& entry : entries) layout.push_back(&entry);
  RETURN_IF_ERROR(CheckLayout(std::move(layout), data.size()));

  std::map<std::string, Tensor> tensors;
  for (const Entry& entry : entries) {
    ASSIGN_OR_RETURN(Tensor tensor, Decode(entry, data));
    tensors.emplace(entry.name, std::move(tensor));
  }
  return tensors;
}

absl::StatusOr<std::map<std::string, Tensor>> ReadSafetensors(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  absl::StatusOr<std::map<std::string, Tensor>> tensors = ParseSafetensors(bytes);
  if (!tensors.ok()) return WithPrefix(tensors.status(), path);
  return tensors;
}

absl::StatusOr<std::string> SerializeSafetensors(const std::map<std::string, Tensor>& tensors) {
  Json header = Json::object();
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == kMetadataKey) {
      return absl::InvalidArgumentError(
          absl::StrCat("a tensor may not be named ", kMetadataKey, " (the format reserves it)"));
    }
    RETURN_IF_ERROR(CheckNameEncodes(name));
    RETURN_IF_ERROR(WithPrefix(ValidateShape(tensor.shape()), TensorLabel(name)));
    if (tensor.raw() == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(TensorLabel(name), ": has no storage (default-constructed Tensor)"));
    }
    Json entry = Json::object();
    entry["dtype"] = tensor.dtype() == DType::kF32 ? "F32" : "I32";
    entry["shape"] = tensor.shape();
    entry["data_offsets"] = Json::array({offset, offset + tensor.bytes()});
    header[name] = std::move(entry);
    offset += tensor.bytes();
  }
  std::string header_text = header.dump();  // Cannot throw: every name was checked above.
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + header_text.size() + offset);
  const uint64_t header_size = header_text.size();
  out.append(reinterpret_cast<const char*>(&header_size), sizeof(header_size));
  out.append(header_text);
  for (const auto& [name, tensor] : tensors) {
    out.append(static_cast<const char*>(tensor.raw()), tensor.bytes());
  }
  return out;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, Tensor>& tensors) {
  ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(tensors));
  return WriteFileAtomically(path, bytes);
}

}  // namespace fleettune::engine::io
