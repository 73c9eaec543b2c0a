// Reading and writing the safetensors format (https://github.com/huggingface/safetensors).
//
// A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
//   {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "__metadata__": {...}}
// and then the raw little-endian tensor bytes; data_offsets are [begin, end) byte offsets into
// that data section.
//
//   ASSIGN_OR_RETURN(auto tensors, ReadSafetensors("/data/model.safetensors"));
//   const Tensor& w = tensors.at("w");
//   RETURN_IF_ERROR(WriteSafetensors("/data/finetuned.safetensors", tensors));
//
// Files are untrusted; the reader validates everything and never crashes on bad bytes. It
// follows the reference implementation's rules: tensors' byte ranges must not overlap and must
// cover the data section exactly, and "__metadata__" must map strings to strings (it is
// checked, then dropped). dtypes: F32 and I32 are read as is, I64 is narrowed to i32 (an error
// if a value does not fit), F64 is narrowed to f32 (an error if a finite value does not fit);
// any other dtype is an error.
//
// Error codes (every message about a tensor names it; file functions prefix the path):
//   NotFound         ReadSafetensors: the file does not exist.
//   DataLoss         the bytes end before the header says they should (truncated file).
//   InvalidArgument  anything else malformed: header length over 100 MB, invalid JSON, missing
//                    or ill-typed fields, duplicate names, unsupported dtype, invalid shape,
//                    wrong byte count, overlapping or uncovered bytes, values that do not fit.
//                    Writers: a tensor named "__metadata__" or a name that is not UTF-8.
// Other I/O failures carry the code that matches errno.
//
// Thread-safety: the functions share no state; call them from any thread.
#ifndef FLEETTUNE_ENGINE_IO_SAFETENSORS_H_
#define FLEETTUNE_ENGINE_IO_SAFETENSORS_H_

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/ir/tensor.h"

namespace fleettune::engine::io {

// ParseSafetensors()
//
// Decodes a whole safetensors file held in `bytes`. Returns the tensors by name; they own
// copies of their data, so `bytes` may be freed afterwards.
absl::StatusOr<std::map<std::string, Tensor>> ParseSafetensors(absl::string_view bytes);

// ReadSafetensors()
//
// Reads the file at `path` and decodes it as ParseSafetensors() does.
absl::StatusOr<std::map<std::string, Tensor>> ReadSafetensors(const std::string& path);

// SerializeSafetensors()
//
// Encodes `tensors` (F32 or I32) in name order, the header padded with spaces so that the data
// section starts 8-byte aligned, as the reference writer does. No "__metadata__" is written.
absl::StatusOr<std::string> SerializeSafetensors(const std::map<std::string, Tensor>& tensors);

// WriteSafetensors()
//
// Writes SerializeSafetensors(tensors) to `path` (mode 0644). The bytes go to a temporary file
// in the same directory, which is fsync'ed and then renamed over `path`, so a crash leaves
// either the old file or the complete new one, never a partial file.
absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, Tensor>& tensors);

}  // namespace fleettune::engine::io

#endif  // FLEETTUNE_ENGINE_IO_SAFETENSORS_H_
