// Human-readable byte counts for error messages and reports.
//
//   FormatBytes(9542312)      == "9.1 MiB"
//   FormatBytes(8 << 20)      == "8 MiB"
//   FormatBytes(size_t{4} << 30) == "4 GiB"
//
// Binary units (KiB, MiB, GiB, TiB), one decimal, a trailing ".0" dropped; under 1 KiB the
// exact count ("512 bytes"). Messages that matter print the exact byte count beside it.
// Pure function; thread-safe.
#ifndef FLEETTUNE_SERVER_COMPILER_BYTE_SIZE_H_
#define FLEETTUNE_SERVER_COMPILER_BYTE_SIZE_H_

#include <cstdint>
#include <string>

namespace fleettune::server {

std::string FormatBytes(uint64_t bytes);

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_COMPILER_BYTE_SIZE_H_
