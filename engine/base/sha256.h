// SHA-256 through OpenSSL's EVP interface (OpenSSL is the project's one
// crypto library; its digests are hardware accelerated where the CPU allows).
//
//   std::string digest = Sha256Hex(bytes);  // 64 lower-case hex characters
//
//   Sha256 hash;                            // incremental, for inputs held in pieces
//   hash.Update(weights);
//   hash.Update(labels);
//   std::string key = hash.HexDigest();
//
// A Sha256 is not thread-safe; separate objects are independent.
#ifndef FLEETTUNE_ENGINE_BASE_SHA256_H_
#define FLEETTUNE_ENGINE_BASE_SHA256_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace fleettune::engine {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view bytes);
  void Update(const void* data, size_t size) {
    Update(absl::string_view(static_cast<const char*>(data), size));
  }
  // Hashes `value` as 8 little-endian bytes (lengths and counts, so that
  // adjacent variable-length fields cannot run into each other).
  void UpdateInt(uint64_t value);
  // The digest of everything so far, as 64 lower-case hex characters. The
  // hasher is spent afterwards: a further Update or HexDigest aborts.
  std::string HexDigest();

 private:
  EVP_MD_CTX* ctx_;
  bool done_ = false;
};

std::string Sha256Hex(absl::string_view bytes);

// True for 64 lower-case hex characters.
bool IsSha256Hex(absl::string_view text);

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_BASE_SHA256_H_
