#include "server/store/sqlite_store.h"

#include <sqlite3.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "engine/base/file.h"
#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "server/base/sha256.h"
#include "server/store/store.h"

namespace fleettune::server {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::_;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

MATCHER_P(EqualsProto, expected, "equals " + expected.DebugString()) {
  return google::protobuf::util::MessageDifferencer::Equals(arg, expected);
}

// A fresh database path under TEST_TMPDIR, named after the running test.
std::string TempDbPath() {
  const char* dir = std::getenv("TEST_TMPDIR");
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string path = absl::StrCat(dir != nullptr ? dir : "/tmp", "/", info->test_suite_name(), "_",
                                  info->name(), ".db");
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((path + suffix).c_str());
  return path;
}

// Runs `sql` on `path` through a separate raw connection, as an operator with
// the sqlite3 shell (or a disk fault) would; `text` binds to ?1 if given.
void RawExec(const std::string& path, const std::string& sql, const char* text = nullptr) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK)
      << sqlite3_errmsg(db);
  if (text != nullptr) sqlite3_bind_text(stmt, 1, text, -1, SQLITE_TRANSIENT);
  const int rc = sqlite3_step(stmt);
  EXPECT_TRUE(rc == SQLITE_DONE || rc == SQLITE_ROW) << sqlite3_errmsg(db);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

// The first column of a one-row query on `path`, as text.
std::string RawQuery(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  std::string result;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    result = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return result;
}

v1::Job MakeJob(const std::string& id, int64_t created_seconds) {
  v1::Job job;
  job.set_job_id(id);
  job.set_state(v1::JOB_STATE_RUNNING);
  job.mutable_spec()->set_name("tune-" + id);
  job.mutable_spec()->mutable_base_model()->set_architecture("mlp");
  job.mutable_spec()->mutable_base_model()->add_layer_sizes(16);
  job.mutable_spec()->mutable_base_model()->add_layer_sizes(4);
  v1::ClassTarget* target = job.mutable_spec()->add_targets();
  target->set_device_class("rpi4");
  target->set_devices(2);
  job.set_base_weights_digest(Sha256Hex("weights"));
  job.mutable_created_at()->set_seconds(created_seconds);
  job.mutable_created_at()->set_nanos(5000);
  return job;
}

DeviceRecord MakeDevice(const std::string& id) {
  DeviceRecord record;
  record.device.set_device_id(id);
  record.device.set_device_class("rpi4");
  record.device.set_state(v1::DEVICE_STATE_ONLINE);
  record.device.mutable_profile()->set_arch("aarch64");
  record.device.mutable_profile()->add_isa_features("neon");
  record.device.mutable_profile()->set_memory_bytes(int64_t{4} << 30);
  record.token_sha256 = Sha256Hex("token-" + id);
  return record;
}

v1::Assignment MakeAssignment(const std::string& id, const std::string& job_id,
                              const std::string& device_id) {
  v1::Assignment assignment;
  assignment.set_assignment_id(id);
  assignment.set_job_id(job_id);
  assignment.set_device_id(device_id);
  assignment.set_device_class("rpi4");
  assignment.set_state(v1::ASSIGNMENT_STATE_RUNNING);
  assignment.set_plan_digest(Sha256Hex("plan"));
  assignment.set_plan_bytes(4);
  assignment.set_memory_budget_bytes(uint64_t{1} << 30);
  return assignment;
}

MetricsRecord MakeMetrics(const std::string& assignment_id, const std::string& job_id,
                          int64_t sequence) {
  MetricsRecord record;
  record.job_id = job_id;
  record.device_class = "rpi4";
  record.report.set_assignment_id(assignment_id);
  record.report.set_sequence(sequence);
  record.report.set_steps_done(10 * sequence);
  record.report.set_steps_total(100);
  v1::LossPoint* point = record.report.add_loss_curve();
  point->set_step(10 * sequence);
  point->set_loss(1.0f / static_cast<float>(sequence));
  record.report.set_ms_per_step(12.5);
  return record;
}

// A job, a device, an assignment of the one to the other and its metrics.
WriteBatch FullBatch(const std::string& suffix, int64_t created_seconds = 1700000000) {
  WriteBatch batch;
  batch.jobs.push_back(MakeJob("job-" + suffix, created_seconds));
  batch.devices.push_back(MakeDevice("dev-" + suffix));
  batch.assignments.push_back(MakeAssignment("asg-" + suffix, "job-" + suffix, "dev-" + suffix));
  batch.metrics.push_back(MakeMetrics("asg-" + suffix, "job-" + suffix, 1));
  return batch;
}

void ExpectSnapshotHolds(const StoreSnapshot& snapshot, const WriteBatch& batch) {
  ASSERT_THAT(snapshot.jobs, SizeIs(batch.jobs.size()));
  ASSERT_THAT(snapshot.devices, SizeIs(batch.devices.size()));
  ASSERT_THAT(snapshot.assignments, SizeIs(batch.assignments.size()));
  ASSERT_THAT(snapshot.metrics, SizeIs(batch.metrics.size()));
  for (size_t i = 0; i < batch.jobs.size(); ++i) {
    EXPECT_THAT(snapshot.jobs[i], EqualsProto(batch.jobs[i]));
  }
  for (size_t i = 0; i < batch.devices.size(); ++i) {
    EXPECT_THAT(snapshot.devices[i].device, EqualsProto(batch.devices[i].device));
    EXPECT_EQ(snapshot.devices[i].token_sha256, batch.devices[i].token_sha256);
  }
  for (size_t i = 0; i < batch.assignments.size(); ++i) {
    EXPECT_THAT(snapshot.assignments[i], EqualsProto(batch.assignments[i]));
  }
  for (size_t i = 0; i < batch.metrics.size(); ++i) {
    EXPECT_EQ(snapshot.metrics[i].job_id, batch.metrics[i].job_id);
    EXPECT_EQ(snapshot.metrics[i].device_class, batch.metrics[i].device_class);
    EXPECT_THAT(snapshot.metrics[i].report, EqualsProto(batch.metrics[i].report));
  }
}

std::string RandomBytes(size_t size) {
  absl::BitGen gen;
  std::string bytes(size, '\0');
  for (char& c : bytes) c = static_cast<char>(absl::Uniform<uint8_t>(gen));
  return bytes;
}

TEST(SqliteStore, RoundTripsEveryRecordType) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(":memory:"));
  ASSERT_OK_AND_ASSIGN(StoreSnapshot empty, store->LoadAll());
  EXPECT_THAT(empty.jobs, IsEmpty());
  EXPECT_THAT(empty.metrics, IsEmpty());

  const WriteBatch batch = FullBatch("a");
  ASSERT_OK(store->Write(batch));
  ASSERT_OK_AND_ASSIGN(StoreSnapshot snapshot, store->LoadAll());
  ExpectSnapshotHolds(snapshot, batch);
}

TEST(SqliteStore, UpsertsByKeyAndListsJobsOldestFirst) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(":memory:"));
  WriteBatch first;
  first.jobs = {MakeJob("late", 300), MakeJob("early", 100)};
  ASSERT_OK(store->Write(first));

  v1::Job updated = MakeJob("late", 300);
  updated.set_state(v1::JOB_STATE_SUCCEEDED);
  WriteBatch second;
  second.jobs = {updated, MakeJob("middle", 200)};
  ASSERT_OK(store->Write(second));

  ASSERT_OK_AND_ASSIGN(StoreSnapshot snapshot, store->LoadAll());
  ASSERT_THAT(snapshot.jobs, SizeIs(3));
  EXPECT_EQ(snapshot.jobs[0].job_id(), "early");
  EXPECT_EQ(snapshot.jobs[1].job_id(), "middle");
  EXPECT_THAT(snapshot.jobs[2], EqualsProto(updated));
}

TEST(SqliteStore, KeepsEverythingAcrossReopen) {
  const std::string path = TempDbPath();
  const WriteBatch batch = FullBatch("a");
  const std::string plan = RandomBytes(1000);
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(path));
    ASSERT_OK(store->Write(batch));
    ASSERT_OK(store->PutBlob(Sha256Hex(plan), "plan", plan));
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(path));
  ASSERT_OK_AND_ASSIGN(StoreSnapshot snapshot, store->LoadAll());
  ExpectSnapshotHolds(snapshot, batch);
  uint64_t total = 0;
  ASSERT_OK_AND_ASSIGN(std::string bytes, store->ReadBlob(Sha256Hex(plan), 0, 1 << 20, &total));
  EXPECT_EQ(bytes, plan);
  EXPECT_EQ(total, plan.size());
}

TEST(SqliteStore, UsesWalAndRecordsSchemaVersion) {
  const std::string path = TempDbPath();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(path));
  EXPECT_EQ(RawQuery(path, "PRAGMA journal_mode"), "wal");
  EXPECT_EQ(RawQuery(path, "PRAGMA user_version"), "1");
}

TEST(SqliteStore, BatchWithInvalidRecordWritesNothing) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(":memory:"));
  WriteBatch batch = FullBatch("a");
  batch.jobs.push_back(MakeJob("", 1));
  EXPECT_THAT(store->Write(batch),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("jobs[1]: empty job_id")));

  ASSERT_OK_AND_ASSIGN(StoreSnapshot snapshot, store->LoadAll());
  EXPECT_THAT(snapshot.jobs, IsEmpty());
  EXPECT_THAT(snapshot.devices, IsEmpty());
  EXPECT_THAT(snapshot.assignments, IsEmpty());
  EXPECT_THAT(snapshot.metrics, IsEmpty());
}

// Fails half-way through the transaction (after the job and device rows were
// inserted), so this checks the rollback, not just the validation up front.
TEST(SqliteStore, DanglingReferenceRollsBackTheWholeBatch) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(":memory:"));
  WriteBatch batch = FullBatch("a");
  batch.assignments.push_back(MakeAssignment("asg-b", "job-missing", "dev-a"));
  EXPECT_THAT(
      store->Write(batch),
      StatusIs(absl::StatusCode::kFailedPrecondition,
               HasSubstr("assignment 'asg-b': job 'job-missing' or device 'dev-a' is not stored")));

  ASSERT_OK_AND_ASSIGN(StoreSnapshot snapshot, store->LoadAll());
  EXPECT_THAT(snapshot.jobs, IsEmpty());
  EXPECT_THAT(snapshot.devices, IsEmpty());
  EXPECT_THAT(snapshot.assignments, IsEmpty());

  // The connection is usable afterwards.
  ASSERT_OK(store->Write(FullBatch("a")));
  WriteBatch orphan_metrics;
  orphan_metrics.metrics.push_back(MakeMetrics("asg-missing", "job-a", 1));
  EXPECT_THAT(store->Write(orphan_metrics),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("asg-missing")));
}

TEST(SqliteStore, RejectsRecordsWithoutKeysOrWithBadTokenHash) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(":memory:"));
  WriteBatch no_device_id;
  no_device_id.devices.push_back(MakeDevice(""));
  EXPECT_THAT(store->Write(no_device_id),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty device_id")));

  WriteBatch bad_token;
  bad_token.devices.push_back(MakeDevice("dev-a"));
  bad_token.devices[0].token_sha256 = "plaintext-token";
  EXPECT_THAT(store->Write(bad_token),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token_sha256")));

  WriteBatch no_job;
  no_job.assignments.push_back(MakeAssignment("asg-a", "", "dev-a"));
  EXPECT_THAT(store->Write(no_job),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'asg-a'")));

  WriteBatch no_assignment;
  no_assignment.metrics.push_back(MakeMetrics("", "job-a", 1));
  EXPECT_THAT(store->Write(no_assignment),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("assignment_id")));
}

TEST(SqliteStore, MetricsKeepTheHighestSequence) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(":memory:"));
  ASSERT_OK(store->Write(FullBatch("a")));  // sequence 1

  auto stored_sequence = [&]() -> int64_t {
    absl::StatusOr<StoreSnapshot> snapshot = store->LoadAll();
    EXPECT_OK(snapshot.status());
    if (!snapshot.ok() || snapshot->metrics.size() != 1) return -1;
    return snapshot->metrics[0].report.sequence();
  };
  auto write = [&](std::vector<int64_t> sequences) {
    WriteBatch batch;
    for (int64_t s : sequences) batch.metrics.push_back(MakeMetrics("asg-a", "job-a", s));
    return store->Write(batch);
  };

  ASSERT_OK(write({3}));
  EXPECT_EQ(stored_sequence(), 3);
  ASSERT_OK(write({2}));  // a late retry of an older report
  EXPECT_EQ(stored_sequence(), 3);

  // A repeated sequence keeps the first report.
  MetricsRecord repeat = MakeMetrics("asg-a", "job-a", 3);
  repeat.report.set_steps_done(999);
  WriteBatch batch;
  batch.metrics.push_back(repeat);
  ASSERT_OK(store->Write(batch));
  ASSERT_OK_AND_ASSIGN(StoreSnapshot snapshot, store->LoadAll());
  EXPECT_EQ(snapshot.metrics[0].report.steps_done(), 30);

  // Within one batch too.
  ASSERT_OK(write({5, 4}));
  EXPECT_EQ(stored_sequence(), 5);
}

TEST(SqliteStore, ReadsBlobsInRanges) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(":memory:"));
  const std::string weights = RandomBytes((1 << 20) + 123);
  const std::string digest = Sha256Hex(weights);
  ASSERT_OK(store->PutBlob(digest, "weights", weights));
  ASSERT_OK(store->PutBlob(digest, "weights", weights));  // idempotent

  ASSERT_OK_AND_ASSIGN(uint64_t size, store->BlobSize(digest));
  EXPECT_EQ(size, weights.size());

  std::string reassembled;
  uint64_t total = 0;
  while (reassembled.size() < weights.size()) {
    ASSERT_OK_AND_ASSIGN(std::string chunk,
                         store->ReadBlob(digest, reassembled.size(), 64 << 10, &total));
    ASSERT_THAT(chunk, ::testing::Not(IsEmpty()));
    EXPECT_LE(chunk.size(), 64u << 10);
    reassembled += chunk;
  }
  EXPECT_EQ(reassembled, weights);
  EXPECT_EQ(total, weights.size());

  ASSERT_OK_AND_ASSIGN(std::string middle, store->ReadBlob(digest, 1000, 10, nullptr));
  EXPECT_EQ(middle, weights.substr(1000, 10));
  ASSERT_OK_AND_ASSIGN(std::string none, store->ReadBlob(digest, 5, 0, nullptr));
  EXPECT_THAT(none, IsEmpty());
}

TEST(SqliteStore, BlobReadAtTheEndIsEmptyAndPastItOutOfRange) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(":memory:"));
  const std::string plan = "compiled plan bytes";
  const std::string digest = Sha256Hex(plan);
  ASSERT_OK(store->PutBlob(digest, "plan", plan));

  uint64_t total = 0;
  ASSERT_OK_AND_ASSIGN(std::string at_end, store->ReadBlob(digest, plan.size(), 100, &total));
  EXPECT_THAT(at_end, IsEmpty());
  EXPECT_EQ(total, plan.size());
  EXPECT_THAT(store->ReadBlob(digest, plan.size() + 1, 100, &total),
              StatusIs(absl::StatusCode::kOutOfRange, HasSubstr("offset 20")));

  // An empty blob is legal.
  ASSERT_OK(store->PutBlob(Sha256Hex(""), "plan", ""));
  ASSERT_OK_AND_ASSIGN(std::string empty, store->ReadBlob(Sha256Hex(""), 0, 100, &total));
  EXPECT_THAT(empty, IsEmpty());
  EXPECT_EQ(total, 0u);
}

TEST(SqliteStore, RejectsUnknownAndMismatchedBlobs) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(":memory:"));
  const std::string unknown = Sha256Hex("never stored");
  EXPECT_THAT(store->ReadBlob(unknown, 0, 10, nullptr),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(unknown)));
  EXPECT_THAT(store->BlobSize(unknown), StatusIs(absl::StatusCode::kNotFound, HasSubstr(unknown)));

  EXPECT_THAT(store->PutBlob(Sha256Hex("other bytes"), "plan", "bytes"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hash to")));
  EXPECT_THAT(store->PutBlob("not-a-digest", "plan", "bytes"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not-a-digest")));
  EXPECT_THAT(store->PutBlob(Sha256Hex("bytes"), "dataset", "bytes"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'dataset'")));
  EXPECT_THAT(store->BlobSize(Sha256Hex("bytes")), StatusIs(absl::StatusCode::kNotFound, _));
}

TEST(SqliteStore, RefusesASchemaNewerThanItKnows) {
  const std::string path = TempDbPath();
  { ASSERT_OK(OpenSqliteStore(path).status()); }
  RawExec(path, "PRAGMA user_version = 999");
  EXPECT_THAT(OpenSqliteStore(path),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       ::testing::AllOf(HasSubstr(path), HasSubstr("schema version 999"),
                                        HasSubstr("newer"))));
}

TEST(SqliteStore, RejectsAFileThatIsNotADatabase) {
  const std::string path = TempDbPath();
  ASSERT_OK(engine::WriteFileAtomically(path, RandomBytes(4096)));
  EXPECT_THAT(OpenSqliteStore(path), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(path)));
}

TEST(SqliteStore, ReportsAPathItCannotOpen) {
  const std::string path = TempDbPath() + ".missing-dir/coordinator.db";
  EXPECT_THAT(OpenSqliteStore(path),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr(path)));
}

TEST(SqliteStore, CorruptedRecordIsDataLossNamingItsKey) {
  const std::string path = TempDbPath();
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(path));
    ASSERT_OK(store->Write(FullBatch("a")));
  }
  RawExec(path, "UPDATE jobs SET record = X'00ff' WHERE job_id = ?1", "job-a");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(path));
  EXPECT_THAT(store->LoadAll(),
              StatusIs(absl::StatusCode::kDataLoss,
                       ::testing::AllOf(HasSubstr("jobs"), HasSubstr("'job-a'"))));
}

TEST(SqliteStore, RecordUnderAnotherKeyIsDataLoss) {
  const std::string path = TempDbPath();
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(path));
    WriteBatch batch;
    batch.devices = {MakeDevice("dev-a"), MakeDevice("dev-b")};
    ASSERT_OK(store->Write(batch));
  }
  RawExec(path,
          "UPDATE devices SET record = (SELECT record FROM devices WHERE device_id = 'dev-b') "
          "WHERE device_id = ?1",
          "dev-a");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(path));
  EXPECT_THAT(store->LoadAll(),
              StatusIs(absl::StatusCode::kDataLoss,
                       ::testing::AllOf(HasSubstr("'dev-a'"), HasSubstr("dev-b"))));
}

TEST(SqliteStore, ConcurrentWritersLoseNothing) {
  const std::string path = TempDbPath();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenSqliteStore(path));
  constexpr int kThreads = 4;
  constexpr int kBatchesPerThread = 25;
  std::vector<absl::Status> results(kThreads * kBatchesPerThread);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kBatchesPerThread; ++i) {
        const int n = t * kBatchesPerThread + i;
        results[n] = store->Write(FullBatch(absl::StrCat(n), n));
        if (i % 5 == 0) {
          absl::StatusOr<StoreSnapshot> snapshot = store->LoadAll();
          if (!snapshot.ok()) results[n] = snapshot.status();
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& status : results) EXPECT_OK(status);

  ASSERT_OK_AND_ASSIGN(StoreSnapshot snapshot, store->LoadAll());
  EXPECT_THAT(snapshot.jobs, SizeIs(kThreads * kBatchesPerThread));
  EXPECT_THAT(snapshot.devices, SizeIs(kThreads * kBatchesPerThread));
  EXPECT_THAT(snapshot.assignments, SizeIs(kThreads * kBatchesPerThread));
  EXPECT_THAT(snapshot.metrics, SizeIs(kThreads * kBatchesPerThread));
  // Jobs come back oldest first; each batch's job was created at second n.
  for (int n = 0; n < kThreads * kBatchesPerThread; ++n) {
    EXPECT_EQ(snapshot.jobs[n].job_id(), absl::StrCat("job-", n));
  }
}

}  // namespace
}  // namespace fleettune::server
