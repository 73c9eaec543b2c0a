#include "server/store/sqlite_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "engine/base/status_macros.h"
#include "google/protobuf/message_lite.h"
#include "google/protobuf/timestamp.pb.h"
#include "server/base/sha256.h"

namespace fleettune::server {
namespace {

// How long a statement waits for a lock another process holds.
constexpr int kBusyTimeoutMs = 5000;

// The schema, as an ordered list of migrations: kMigrations[i] takes a database
// from version i to version i + 1 (`PRAGMA user_version`). Append new
// migrations; never edit one that has shipped, since databases in the field
// already ran it.
//
// Every record column holds the serialized wire proto; the other columns copy
// fields out of it for ordering, indexing and ad-hoc inspection with the
// sqlite3 shell. Foreign keys catch a coordinator bug that would reload as a
// dangling reference after a restart.
constexpr const char* kMigrations[] = {
    // 1: initial schema.
    R"sql(
CREATE TABLE jobs (
  job_id     TEXT    NOT NULL PRIMARY KEY,
  state      INTEGER NOT NULL,  -- fleettune.v1.JobState
  created_at INTEGER NOT NULL,  -- microseconds since the Unix epoch
  record     BLOB    NOT NULL   -- fleettune.v1.Job
);
CREATE INDEX jobs_by_created_at ON jobs (created_at);

CREATE TABLE devices (
  device_id    TEXT NOT NULL PRIMARY KEY,
  device_class TEXT NOT NULL,
  token_sha256 TEXT NOT NULL,   -- hex; '' for a device without a token
  record       BLOB NOT NULL    -- fleettune.v1.Device
);

CREATE TABLE assignments (
  assignment_id TEXT    NOT NULL PRIMARY KEY,
  job_id        TEXT    NOT NULL REFERENCES jobs (job_id),
  device_id     TEXT    NOT NULL REFERENCES devices (device_id),
  state         INTEGER NOT NULL,  -- fleettune.v1.AssignmentState
  record        BLOB    NOT NULL   -- fleettune.v1.Assignment
);
CREATE INDEX assignments_by_job ON assignments (job_id);
CREATE INDEX assignments_by_device ON assignments (device_id);

CREATE TABLE metrics (
  assignment_id TEXT    NOT NULL PRIMARY KEY REFERENCES assignments (assignment_id),
  job_id        TEXT    NOT NULL,
  device_class  TEXT    NOT NULL,
  sequence      INTEGER NOT NULL,
  record        BLOB    NOT NULL   -- fleettune.v1.MetricsReport
);
CREATE INDEX metrics_by_job ON metrics (job_id);

CREATE TABLE blobs (
  digest TEXT    NOT NULL PRIMARY KEY,  -- SHA-256 of data, lower-case hex
  kind   TEXT    NOT NULL CHECK (kind IN ('plan', 'weights')),
  size   INTEGER NOT NULL,
  data   BLOB    NOT NULL
);
)sql",
};
constexpr int kSchemaVersion = static_cast<int>(sizeof(kMigrations) / sizeof(kMigrations[0]));

// Upserts. The metrics one keeps the stored report unless the new one has a
// higher sequence number, so a late retry of an old report never overwrites a
// newer one.
constexpr char kUpsertJob[] = R"sql(
INSERT INTO jobs (job_id, state, created_at, record) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (job_id) DO UPDATE SET
  state = excluded.state, created_at = excluded.created_at, record = excluded.record)sql";
constexpr char kUpsertDevice[] = R"sql(
INSERT INTO devices (device_id, device_class, token_sha256, record) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (device_id) DO UPDATE SET
  device_class = excluded.device_class, token_sha256 = excluded.token_sha256,
  record = excluded.record)sql";
constexpr char kUpsertAssignment[] = R"sql(
INSERT INTO assignments (assignment_id, job_id, device_id, state, record)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (assignment_id) DO UPDATE SET
  job_id = excluded.job_id, device_id = excluded.device_id, state = excluded.state,
  record = excluded.record)sql";
constexpr char kUpsertMetrics[] = R"sql(
INSERT INTO metrics (assignment_id, job_id, device_class, sequence, record)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (assignment_id) DO UPDATE SET
  job_id = excluded.job_id, device_class = excluded.device_class,
  sequence = excluded.sequence, record = excluded.record
WHERE excluded.sequence > metrics.sequence)sql";

// Jobs oldest first (ties in creation order); the rest in insertion order.
constexpr char kSelectJobs[] = "SELECT job_id, record FROM jobs ORDER BY created_at, rowid";
constexpr char kSelectDevices[] =
    "SELECT device_id, token_sha256, record FROM devices ORDER BY rowid";
constexpr char kSelectAssignments[] =
    "SELECT assignment_id, record FROM assignments ORDER BY rowid";
constexpr char kSelectMetrics[] =
    "SELECT assignment_id, job_id, device_class, record FROM metrics ORDER BY rowid";

constexpr char kInsertBlob[] = R"sql(
INSERT INTO blobs (digest, kind, size, data) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (digest) DO NOTHING)sql";
constexpr char kSelectBlob[] = "SELECT rowid, size FROM blobs WHERE digest = ?1";

// Maps a SQLite result code to the closest canonical code.
absl::StatusCode CodeFor(int rc) {
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return absl::StatusCode::kDataLoss;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_PROTOCOL:
      return absl::StatusCode::kUnavailable;
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return absl::StatusCode::kPermissionDenied;
    case SQLITE_CANTOPEN:
      return absl::StatusCode::kFailedPrecondition;
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
      return absl::StatusCode::kInvalidArgument;
    case SQLITE_CONSTRAINT:
      // A dangling reference is a state problem; other constraints (NOT NULL,
      // CHECK) mean a malformed record.
      return rc == SQLITE_CONSTRAINT_FOREIGNKEY ? absl::StatusCode::kFailedPrecondition
                                                : absl::StatusCode::kInvalidArgument;
    default:
      return absl::StatusCode::kInternal;
  }
}

// "WHAT: MESSAGE (sqlite error N)", using the connection's detailed message
// when it belongs to `rc`.
absl::Status SqliteError(sqlite3* db, int rc, absl::string_view what) {
  const char* message = sqlite3_errstr(rc);
  if (db != nullptr && sqlite3_extended_errcode(db) == rc) message = sqlite3_errmsg(db);
  return absl::Status(CodeFor(rc), absl::StrCat(what, ": ", message, " (sqlite error ", rc, ")"));
}

struct StatementDeleter {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using Statement = std::unique_ptr<sqlite3_stmt, StatementDeleter>;

// Resets a cached statement and drops its bindings when it goes out of scope,
// which also ends the implicit read transaction a SELECT holds open.
class ScopedReset {
 public:
  explicit ScopedReset(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ScopedReset(const ScopedReset&) = delete;
  ScopedReset& operator=(const ScopedReset&) = delete;
  ~ScopedReset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

 private:
  sqlite3_stmt* stmt_;
};

// Bind helpers. Text and blobs are bound SQLITE_STATIC: callers keep the bytes
// alive until the statement is reset.
int BindText(sqlite3_stmt* stmt, int index, absl::string_view text) {
  return sqlite3_bind_text64(stmt, index, text.data(), text.size(), SQLITE_STATIC, SQLITE_UTF8);
}
int BindBlob(sqlite3_stmt* stmt, int index, absl::string_view bytes) {
  // A null pointer would bind SQL NULL, which NOT NULL rejects; "" is a
  // zero-length blob.
  return sqlite3_bind_blob64(stmt, index, bytes.empty() ? "" : bytes.data(), bytes.size(),
                             SQLITE_STATIC);
}

absl::string_view ColumnText(sqlite3_stmt* stmt, int column) {
  const unsigned char* text = sqlite3_column_text(stmt, column);
  if (text == nullptr) return {};
  return absl::string_view(reinterpret_cast<const char*>(text), sqlite3_column_bytes(stmt, column));
}

// Parses the record in `column`. DataLoss naming the table and the row's key
// when it does not parse.
absl::Status ParseRecord(sqlite3_stmt* stmt, int column, absl::string_view table,
                         absl::string_view key, google::protobuf::MessageLite& message) {
  const void* data = sqlite3_column_blob(stmt, column);
  const int size = sqlite3_column_bytes(stmt, column);
  if (!message.ParseFromArray(data, size)) {
    return absl::DataLossError(absl::StrCat(table, " row '", key, "': record (", size,
                                            " bytes) does not parse as ", message.GetTypeName()));
  }
  return absl::OkStatus();
}

// Microseconds since the Unix epoch, clamped so that any Timestamp (the record
// is caller data) maps to an int64 without overflow.
int64_t UnixMicros(const google::protobuf::Timestamp& time) {
  constexpr int64_t kMaxSeconds = std::numeric_limits<int64_t>::max() / 1000000 - 10;
  const int64_t seconds = std::clamp<int64_t>(time.seconds(), -kMaxSeconds, kMaxSeconds);
  return seconds * 1000000 + time.nanos() / 1000;
}

absl::StatusOr<std::string> Serialize(const google::protobuf::MessageLite& message,
                                      absl::string_view what) {
  std::string bytes;
  if (!message.SerializeToString(&bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": record does not serialize"));
  }
  return bytes;
}

// A WriteBatch validated and serialized, ready to bind (done before taking the
// store's lock, so serialization does not hold up other callers).
struct SerializedBatch {
  std::vector<std::string> jobs;
  std::vector<std::string> devices;
  std::vector<std::string> assignments;
  std::vector<std::string> metrics;
};

absl::StatusOr<SerializedBatch> ValidateAndSerialize(const WriteBatch& batch) {
  SerializedBatch out;
  for (size_t i = 0; i < batch.jobs.size(); ++i) {
    const v1::Job& job = batch.jobs[i];
    const std::string what = absl::StrCat("write batch: jobs[", i, "]");
    if (job.job_id().empty()) return absl::InvalidArgumentError(what + ": empty job_id");
    ASSIGN_OR_RETURN(std::string bytes, Serialize(job, what));
    out.jobs.push_back(std::move(bytes));
  }
  for (size_t i = 0; i < batch.devices.size(); ++i) {
    const DeviceRecord& device = batch.devices[i];
    const std::string what = absl::StrCat("write batch: devices[", i, "]");
    if (device.device.device_id().empty()) {
      return absl::InvalidArgumentError(what + ": empty device_id");
    }
    if (!device.token_sha256.empty() && !IsSha256Hex(device.token_sha256)) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " '", device.device.device_id(), "': token_sha256 is not a SHA-256 hex digest"));
    }
    ASSIGN_OR_RETURN(std::string bytes, Serialize(device.device, what));
    out.devices.push_back(std::move(bytes));
  }
  for (size_t i = 0; i < batch.assignments.size(); ++i) {
    const v1::Assignment& assignment = batch.assignments[i];
    const std::string what = absl::StrCat("write batch: assignments[", i, "]");
    if (assignment.assignment_id().empty()) {
      return absl::InvalidArgumentError(what + ": empty assignment_id");
    }
    if (assignment.job_id().empty() || assignment.device_id().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", assignment.assignment_id(), "': empty job_id or device_id"));
    }
    ASSIGN_OR_RETURN(std::string bytes, Serialize(assignment, what));
    out.assignments.push_back(std::move(bytes));
  }
  for (size_t i = 0; i < batch.metrics.size(); ++i) {
    const MetricsRecord& metrics = batch.metrics[i];
    const std::string what = absl::StrCat("write batch: metrics[", i, "]");
    if (metrics.report.assignment_id().empty()) {
      return absl::InvalidArgumentError(what + ": empty report.assignment_id");
    }
    ASSIGN_OR_RETURN(std::string bytes, Serialize(metrics.report, what));
    out.metrics.push_back(std::move(bytes));
  }
  return out;
}

class SqliteStore final : public Store {
 public:
  static absl::StatusOr<std::unique_ptr<SqliteStore>> Open(const std::string& path) {
    sqlite3* db = nullptr;
    // NOMUTEX: the store's own mutex already serializes every use of the
    // connection. No SQLITE_OPEN_URI: `path` is always a plain file name.
    const int rc =
        sqlite3_open_v2(path.c_str(), &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    // The store owns `db` from here on, even when opening failed.
    std::unique_ptr<SqliteStore> store(new SqliteStore(path, db));
    if (rc != SQLITE_OK) return SqliteError(db, rc, absl::StrCat("sqlite store ", path, ": open"));
    absl::MutexLock lock(&store->mu_);
    RETURN_IF_ERROR(store->Configure());
    RETURN_IF_ERROR(store->Migrate());
    RETURN_IF_ERROR(store->PrepareStatements());
    return store;
  }

  ~SqliteStore() override {
    absl::MutexLock lock(&mu_);
    // Statements must be finalized before the connection closes.
    for (Statement* stmt :
         {&begin_immediate_, &begin_, &commit_, &rollback_, &upsert_job_, &upsert_device_,
          &upsert_assignment_, &upsert_metrics_, &select_jobs_, &select_devices_,
          &select_assignments_, &select_metrics_, &insert_blob_, &select_blob_}) {
      stmt->reset();
    }
    // The last connection to close checkpoints the WAL into the main file.
    sqlite3_close_v2(db_);
  }

  absl::StatusOr<StoreSnapshot> LoadAll() override {
    absl::MutexLock lock(&mu_);
    // One read transaction, so the four tables are read at the same instant
    // even if another process writes.
    RETURN_IF_ERROR(StepDone(begin_.get(), "begin read transaction"));
    absl::Cleanup end = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      (void)StepDone(commit_.get(), "end read transaction");
    };

    StoreSnapshot snapshot;
    {
      sqlite3_stmt* stmt = select_jobs_.get();
      ScopedReset reset(stmt);
      int rc;
      while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const absl::string_view key = ColumnText(stmt, 0);
        v1::Job& job = snapshot.jobs.emplace_back();
        RETURN_IF_ERROR(ParseRecord(stmt, 1, "jobs", key, job));
        RETURN_IF_ERROR(CheckKey("jobs", key, job.job_id()));
      }
      if (rc != SQLITE_DONE) return Error(rc, "read jobs");
    }
    {
      sqlite3_stmt* stmt = select_devices_.get();
      ScopedReset reset(stmt);
      int rc;
      while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const absl::string_view key = ColumnText(stmt, 0);
        DeviceRecord& device = snapshot.devices.emplace_back();
        device.token_sha256 = std::string(ColumnText(stmt, 1));
        RETURN_IF_ERROR(ParseRecord(stmt, 2, "devices", key, device.device));
        RETURN_IF_ERROR(CheckKey("devices", key, device.device.device_id()));
      }
      if (rc != SQLITE_DONE) return Error(rc, "read devices");
    }
    {
      sqlite3_stmt* stmt = select_assignments_.get();
      ScopedReset reset(stmt);
      int rc;
      while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const absl::string_view key = ColumnText(stmt, 0);
        v1::Assignment& assignment = snapshot.assignments.emplace_back();
        RETURN_IF_ERROR(ParseRecord(stmt, 1, "assignments", key, assignment));
        RETURN_IF_ERROR(CheckKey("assignments", key, assignment.assignment_id()));
      }
      if (rc != SQLITE_DONE) return Error(rc, "read assignments");
    }
    {
      sqlite3_stmt* stmt = select_metrics_.get();
      ScopedReset reset(stmt);
      int rc;
      while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const absl::string_view key = ColumnText(stmt, 0);
        MetricsRecord& metrics = snapshot.metrics.emplace_back();
        metrics.job_id = std::string(ColumnText(stmt, 1));
        metrics.device_class = std::string(ColumnText(stmt, 2));
        RETURN_IF_ERROR(ParseRecord(stmt, 3, "metrics", key, metrics.report));
        RETURN_IF_ERROR(CheckKey("metrics", key, metrics.report.assignment_id()));
      }
      if (rc != SQLITE_DONE) return Error(rc, "read metrics");
    }
    return snapshot;
  }

  absl::Status Write(const WriteBatch& batch) override {
    if (batch.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(SerializedBatch rows, ValidateAndSerialize(batch));

    absl::MutexLock lock(&mu_);
    // IMMEDIATE takes the write lock up front, so the transaction cannot fail
    // half-way with SQLITE_BUSY when upgrading a read lock.
    RETURN_IF_ERROR(StepDone(begin_immediate_.get(), "write batch: begin"));
    absl::Status status = ApplyLocked(batch, rows);
    if (status.ok()) status = StepDone(commit_.get(), "write batch: commit");
    // A failed statement or COMMIT can leave the transaction open (SQLite
    // rolls back by itself only after some errors); undo everything.
    if (!status.ok() && !sqlite3_get_autocommit(db_)) {
      (void)StepDone(rollback_.get(), "write batch: rollback");
    }
    return status;
  }

  absl::Status PutBlob(const std::string& digest, absl::string_view kind,
                       absl::string_view bytes) override {
    if (kind != "plan" && kind != "weights") {
      return absl::InvalidArgumentError(
          absl::StrCat("blob ", digest, ": kind '", kind, "' is not \"plan\" or \"weights\""));
    }
    if (!IsSha256Hex(digest)) {
      return absl::InvalidArgumentError(
          absl::StrCat("blob '", digest, "': not a lower-case SHA-256 hex digest"));
    }
    // Hashing happens before taking the lock: large blobs take a while.
    const std::string actual = Sha256Hex(bytes);
    if (actual != digest) {
      return absl::InvalidArgumentError(
          absl::StrCat("blob ", digest, ": bytes (", bytes.size(), ") hash to ", actual));
    }

    absl::MutexLock lock(&mu_);
    const int64_t limit = sqlite3_limit(db_, SQLITE_LIMIT_LENGTH, -1);
    if (bytes.size() > static_cast<uint64_t>(limit)) {
      return absl::InvalidArgumentError(absl::StrCat("blob ", digest, ": ", bytes.size(),
                                                     " bytes exceed the store's limit of ", limit));
    }
    // Idempotent: the digest names the content, so a stored blob is the same
    // bytes. (A second put with another kind keeps the first kind.)
    sqlite3_stmt* stmt = insert_blob_.get();
    ScopedReset reset(stmt);
    int rc = BindText(stmt, 1, digest);
    if (rc == SQLITE_OK) rc = BindText(stmt, 2, kind);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 3, static_cast<int64_t>(bytes.size()));
    if (rc == SQLITE_OK) rc = BindBlob(stmt, 4, bytes);
    if (rc != SQLITE_OK) return Error(rc, absl::StrCat("blob ", digest, ": bind"));
    return StepDone(stmt, absl::StrCat("blob ", digest, ": insert"));
  }

  absl::StatusOr<std::string> ReadBlob(const std::string& digest, uint64_t offset,
                                       uint64_t max_bytes, uint64_t* total_bytes) override {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(const BlobRow row, FindBlob(digest));
    if (total_bytes != nullptr) *total_bytes = row.size;
    if (offset > row.size) {
      return absl::OutOfRangeError(absl::StrCat("blob ", digest, ": offset ", offset,
                                                " is past its end (", row.size, " bytes)"));
    }
    const uint64_t length = std::min(max_bytes, row.size - offset);
    if (length == 0) return std::string();

    // Incremental I/O reads just the range, instead of loading the whole blob
    // (up to hundreds of MB of weights) for every chunk a device fetches.
    sqlite3_blob* blob = nullptr;
    int rc = sqlite3_blob_open(db_, "main", "blobs", "data", row.rowid, /*flags=*/0, &blob);
    absl::Cleanup close = [&blob] { sqlite3_blob_close(blob); };
    if (rc != SQLITE_OK) return Error(rc, absl::StrCat("blob ", digest, ": open"));
    if (static_cast<uint64_t>(sqlite3_blob_bytes(blob)) != row.size) {
      return absl::DataLossError(absl::StrCat("blob ", digest, ": holds ", sqlite3_blob_bytes(blob),
                                              " bytes, its row says ", row.size));
    }
    // Both fit in an int: SQLite blobs are at most SQLITE_LIMIT_LENGTH (< 2^31).
    std::string out(length, '\0');
    rc = sqlite3_blob_read(blob, out.data(), static_cast<int>(length), static_cast<int>(offset));
    if (rc != SQLITE_OK) return Error(rc, absl::StrCat("blob ", digest, ": read"));
    return out;
  }

  absl::StatusOr<uint64_t> BlobSize(const std::string& digest) override {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(const BlobRow row, FindBlob(digest));
    return row.size;
  }

 private:
  struct BlobRow {
    int64_t rowid = 0;
    uint64_t size = 0;
  };

  SqliteStore(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

  // Errors carry the database path, so a coordinator's log names the file.
  absl::Status Error(int rc, absl::string_view what) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return SqliteError(db_, rc, absl::StrCat("sqlite store ", path_, ": ", what));
  }

  // Runs SQL without parameters (pragmas, migrations); only ever code constants.
  absl::Status Exec(const std::string& sql, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return Error(rc, what);
    return absl::OkStatus();
  }

  // Runs a one-row query (a pragma) and returns its first column as text.
  absl::StatusOr<std::string> QueryText(const char* sql, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(db_, sql, -1, &raw, nullptr);
    Statement stmt(raw);
    if (rc != SQLITE_OK) return Error(rc, what);
    rc = sqlite3_step(stmt.get());
    if (rc == SQLITE_DONE) return std::string();
    if (rc != SQLITE_ROW) return Error(rc, what);
    return std::string(ColumnText(stmt.get(), 0));
  }

  absl::Status Configure() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, kBusyTimeoutMs);
    // Defensive mode refuses SQL that could corrupt the file on purpose
    // (writable_schema and the like); the store never needs it.
    sqlite3_db_config(db_, SQLITE_DBCONFIG_DEFENSIVE, 1, nullptr);

    // The first statement that reads the file: a file that is not a database
    // fails here with SQLITE_NOTADB (DataLoss).
    ASSIGN_OR_RETURN(const std::string mode,
                     QueryText("PRAGMA journal_mode = WAL", "open (set journal_mode=WAL)"));
    // In-memory databases have no WAL ("memory"); files must get one, or the
    // filesystem lacks the shared memory WAL needs (e.g. some network mounts),
    // where SQLite is not safe to use anyway.
    if (mode != "wal" && mode != "memory") {
      return absl::FailedPreconditionError(
          absl::StrCat("sqlite store ", path_, ": cannot use WAL journaling (journal_mode is '",
                       mode, "'); put the database on a local filesystem"));
    }
    // FULL rather than NORMAL: with WAL, NORMAL only risks the last commits on
    // power loss, but those are exactly what the coordinator has already
    // acknowledged to devices (a registration and its token, an accepted
    // report that will not be resent). One fsync per batch is cheap at the
    // coordinator's write rate.
    RETURN_IF_ERROR(Exec("PRAGMA synchronous = FULL", "set synchronous=FULL"));
    RETURN_IF_ERROR(Exec("PRAGMA foreign_keys = ON", "enable foreign keys"));
    // The pragma is silently ignored by builds without foreign key support.
    ASSIGN_OR_RETURN(const std::string foreign_keys,
                     QueryText("PRAGMA foreign_keys", "read foreign_keys"));
    if (foreign_keys != "1") {
      return absl::FailedPreconditionError(
          absl::StrCat("sqlite store ", path_, ": this SQLite build cannot enforce foreign keys"));
    }
    return absl::OkStatus();
  }

  // Applies the migrations the database lacks, all in one transaction.
  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // IMMEDIATE: two coordinators starting at once must not both migrate.
    RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE", "begin schema migration"));
    absl::Status status = MigrateInTransaction();
    if (status.ok()) status = Exec("COMMIT", "commit schema migration");
    if (!status.ok() && !sqlite3_get_autocommit(db_)) {
      (void)Exec("ROLLBACK", "roll back schema migration");
    }
    return status;
  }

  absl::Status MigrateInTransaction() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ASSIGN_OR_RETURN(const std::string text,
                     QueryText("PRAGMA user_version", "read schema version"));
    int version = 0;
    if (!absl::SimpleAtoi(text, &version) || version < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sqlite store ", path_, ": unknown schema version '", text, "' (PRAGMA user_version)"));
    }
    if (version > kSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sqlite store ", path_, ": database schema version ", version,
          " is newer than this build supports (", kSchemaVersion,
          "); it was written by a newer fleettune: run that version or restore a backup"));
    }
    if (version == kSchemaVersion) return absl::OkStatus();
    for (int v = version; v < kSchemaVersion; ++v) {
      absl::Status status = Exec(kMigrations[v], absl::StrCat("schema migration ", v + 1));
      if (!status.ok()) {
        return absl::FailedPreconditionError(absl::StrCat(
            status.message(), "; the database (schema version ", version, ") is left unchanged"));
      }
    }
    // PRAGMA takes no bound parameters; the value is a code constant.
    return Exec(absl::StrCat("PRAGMA user_version = ", kSchemaVersion), "set schema version");
  }

  absl::Status PrepareStatements() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const std::pair<Statement*, const char*> statements[] = {
        {&begin_immediate_, "BEGIN IMMEDIATE"},
        {&begin_, "BEGIN"},
        {&commit_, "COMMIT"},
        {&rollback_, "ROLLBACK"},
        {&upsert_job_, kUpsertJob},
        {&upsert_device_, kUpsertDevice},
        {&upsert_assignment_, kUpsertAssignment},
        {&upsert_metrics_, kUpsertMetrics},
        {&select_jobs_, kSelectJobs},
        {&select_devices_, kSelectDevices},
        {&select_assignments_, kSelectAssignments},
        {&select_metrics_, kSelectMetrics},
        {&insert_blob_, kInsertBlob},
        {&select_blob_, kSelectBlob},
    };
    for (const auto& [stmt, sql] : statements) {
      sqlite3_stmt* raw = nullptr;
      const int rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
      stmt->reset(raw);
      if (rc != SQLITE_OK) return Error(rc, absl::StrCat("prepare \"", sql, "\""));
    }
    return absl::OkStatus();
  }

  // Steps a statement that returns no rows, then resets it.
  absl::Status StepDone(sqlite3_stmt* stmt, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ScopedReset reset(stmt);
    const int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE) return Error(rc, what);
    return absl::OkStatus();
  }

  absl::Status CheckKey(absl::string_view table, absl::string_view key,
                        absl::string_view record_key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (key == record_key) return absl::OkStatus();
    return absl::DataLossError(absl::StrCat("sqlite store ", path_, ": ", table, " row '", key,
                                            "' holds the record of '", record_key, "'"));
  }

  absl::Status ApplyLocked(const WriteBatch& batch, const SerializedBatch& rows)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // Parents first, so every foreign key a batch introduces already resolves
    // when its row is inserted, and a violation names the offending record.
    for (size_t i = 0; i < batch.jobs.size(); ++i) {
      const v1::Job& job = batch.jobs[i];
      sqlite3_stmt* stmt = upsert_job_.get();
      ScopedReset reset(stmt);
      int rc = BindText(stmt, 1, job.job_id());
      if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, 2, job.state());
      if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 3, UnixMicros(job.created_at()));
      if (rc == SQLITE_OK) rc = BindBlob(stmt, 4, rows.jobs[i]);
      if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
      if (rc != SQLITE_DONE) return Error(rc, absl::StrCat("write job '", job.job_id(), "'"));
    }
    for (size_t i = 0; i < batch.devices.size(); ++i) {
      const DeviceRecord& device = batch.devices[i];
      sqlite3_stmt* stmt = upsert_device_.get();
      ScopedReset reset(stmt);
      int rc = BindText(stmt, 1, device.device.device_id());
      if (rc == SQLITE_OK) rc = BindText(stmt, 2, device.device.device_class());
      if (rc == SQLITE_OK) rc = BindText(stmt, 3, device.token_sha256);
      if (rc == SQLITE_OK) rc = BindBlob(stmt, 4, rows.devices[i]);
      if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
      if (rc != SQLITE_DONE) {
        return Error(rc, absl::StrCat("write device '", device.device.device_id(), "'"));
      }
    }
    for (size_t i = 0; i < batch.assignments.size(); ++i) {
      const v1::Assignment& assignment = batch.assignments[i];
      sqlite3_stmt* stmt = upsert_assignment_.get();
      ScopedReset reset(stmt);
      int rc = BindText(stmt, 1, assignment.assignment_id());
      if (rc == SQLITE_OK) rc = BindText(stmt, 2, assignment.job_id());
      if (rc == SQLITE_OK) rc = BindText(stmt, 3, assignment.device_id());
      if (rc == SQLITE_OK) rc = sqlite3_bind_int(stmt, 4, assignment.state());
      if (rc == SQLITE_OK) rc = BindBlob(stmt, 5, rows.assignments[i]);
      if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
      if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) {
        return Error(rc, absl::StrCat("write assignment '", assignment.assignment_id(), "': job '",
                                      assignment.job_id(), "' or device '", assignment.device_id(),
                                      "' is not stored"));
      }
      if (rc != SQLITE_DONE) {
        return Error(rc, absl::StrCat("write assignment '", assignment.assignment_id(), "'"));
      }
    }
    for (size_t i = 0; i < batch.metrics.size(); ++i) {
      const MetricsRecord& metrics = batch.metrics[i];
      sqlite3_stmt* stmt = upsert_metrics_.get();
      ScopedReset reset(stmt);
      int rc = BindText(stmt, 1, metrics.report.assignment_id());
      if (rc == SQLITE_OK) rc = BindText(stmt, 2, metrics.job_id);
      if (rc == SQLITE_OK) rc = BindText(stmt, 3, metrics.device_class);
      if (rc == SQLITE_OK) rc = sqlite3_bind_int64(stmt, 4, metrics.report.sequence());
      if (rc == SQLITE_OK) rc = BindBlob(stmt, 5, rows.metrics[i]);
      if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
      if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) {
        return Error(rc, absl::StrCat("write metrics: assignment '", metrics.report.assignment_id(),
                                      "' is not stored"));
      }
      if (rc != SQLITE_DONE) {
        return Error(
            rc, absl::StrCat("write metrics of assignment '", metrics.report.assignment_id(), "'"));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<BlobRow> FindBlob(const std::string& digest) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    sqlite3_stmt* stmt = select_blob_.get();
    ScopedReset reset(stmt);
    int rc = BindText(stmt, 1, digest);
    if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("blob ", digest, ": not found"));
    if (rc != SQLITE_ROW) return Error(rc, absl::StrCat("blob ", digest, ": look up"));
    const int64_t size = sqlite3_column_int64(stmt, 1);
    if (size < 0) {
      return absl::DataLossError(absl::StrCat("blob ", digest, ": negative size ", size));
    }
    return BlobRow{sqlite3_column_int64(stmt, 0), static_cast<uint64_t>(size)};
  }

  const std::string path_;
  mutable absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);

  Statement begin_immediate_ ABSL_GUARDED_BY(mu_);
  Statement begin_ ABSL_GUARDED_BY(mu_);
  Statement commit_ ABSL_GUARDED_BY(mu_);
  Statement rollback_ ABSL_GUARDED_BY(mu_);
  Statement upsert_job_ ABSL_GUARDED_BY(mu_);
  Statement upsert_device_ ABSL_GUARDED_BY(mu_);
  Statement upsert_assignment_ ABSL_GUARDED_BY(mu_);
  Statement upsert_metrics_ ABSL_GUARDED_BY(mu_);
  Statement select_jobs_ ABSL_GUARDED_BY(mu_);
  Statement select_devices_ ABSL_GUARDED_BY(mu_);
  Statement select_assignments_ ABSL_GUARDED_BY(mu_);
  Statement select_metrics_ ABSL_GUARDED_BY(mu_);
  Statement insert_blob_ ABSL_GUARDED_BY(mu_);
  Statement select_blob_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<SqliteStore> store, SqliteStore::Open(path));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace fleettune::server
