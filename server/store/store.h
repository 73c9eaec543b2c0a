// Persistent coordinator state behind an interface.
//
// The coordinator keeps its working state in memory and writes every change
// through to a Store as one atomic WriteBatch; at start-up it reloads
// everything with LoadAll(). Records are the wire protos themselves, so the
// store needs no mapping layer. Content-addressed blobs (compiled plans, base
// weights) live beside them and are read in ranges for chunked transfers.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Store> store, OpenSqliteStore(path));
//   WriteBatch batch;
//   batch.jobs.push_back(job);
//   RETURN_IF_ERROR(store->Write(batch));
//
// The default backend is SQLite (sqlite_store.h); the interface is small so a
// PostgreSQL backend can serve coordinators that outgrow one machine.
// Implementations are thread-safe.
#ifndef FLEETTUNE_SERVER_STORE_STORE_H_
#define FLEETTUNE_SERVER_STORE_STORE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/fleettune/v1/device.pb.h"
#include "proto/fleettune/v1/job.pb.h"

namespace fleettune::server {

struct DeviceRecord {
  v1::Device device;
  // SHA-256 (hex) of the device's bearer token; the token itself is never stored.
  std::string token_sha256;
};

// A metrics report with the keys the coordinator aggregates by.
struct MetricsRecord {
  std::string job_id;
  std::string device_class;
  v1::MetricsReport report;  // the latest accepted report of its assignment
};

// Upserts, applied atomically: all or nothing.
struct WriteBatch {
  std::vector<v1::Job> jobs;                // keyed by job_id
  std::vector<DeviceRecord> devices;        // keyed by device.device_id
  std::vector<v1::Assignment> assignments;  // keyed by assignment_id
  std::vector<MetricsRecord> metrics;       // keyed by report.assignment_id

  bool empty() const {
    return jobs.empty() && devices.empty() && assignments.empty() && metrics.empty();
  }
};

struct StoreSnapshot {
  std::vector<v1::Job> jobs;  // oldest first
  std::vector<DeviceRecord> devices;
  std::vector<v1::Assignment> assignments;
  std::vector<MetricsRecord> metrics;
};

class Store {
 public:
  virtual ~Store() = default;

  // Everything, for start-up. DataLoss if a record does not parse (the
  // message names the table and the record's key).
  virtual absl::StatusOr<StoreSnapshot> LoadAll() = 0;
  // Applies every upsert in one transaction: on any error nothing is written.
  // InvalidArgument for a record without its key, an assignment without its
  // job_id or device_id, or a token_sha256 that is neither empty nor a SHA-256
  // hex digest. FailedPrecondition for a dangling reference: an assignment
  // whose job or device, or metrics whose assignment, is neither stored nor in
  // the batch (a batch's jobs and devices are written before its assignments,
  // and those before its metrics). Metrics replace the stored report of their
  // assignment only if their sequence is higher.
  virtual absl::Status Write(const WriteBatch& batch) = 0;

  // Stores `bytes` under `digest` (SHA-256 hex of the bytes, checked);
  // idempotent. `kind` is "plan" or "weights". InvalidArgument for a digest
  // that does not match the bytes or another kind.
  virtual absl::Status PutBlob(const std::string& digest, absl::string_view kind,
                               absl::string_view bytes) = 0;
  // Up to `max_bytes` from `offset`; `total_bytes` (may be null) gets the
  // blob's size. Empty at offset == size. NotFound for an unknown digest,
  // OutOfRange for offset > size.
  virtual absl::StatusOr<std::string> ReadBlob(const std::string& digest, uint64_t offset,
                                               uint64_t max_bytes, uint64_t* total_bytes) = 0;
  // NotFound for an unknown digest.
  virtual absl::StatusOr<uint64_t> BlobSize(const std::string& digest) = 0;
};

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_STORE_STORE_H_
