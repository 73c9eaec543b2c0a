// The coordinator's core: jobs, devices, assignments and their rules.
//
// Everything the two gRPC services do goes through this class, so it is tested
// without a network (coordinator_test.cc). State lives in memory and every
// change is written through to the Store as one atomic batch before the call
// returns; Create() reloads it, so a restart loses nothing.
//
//   ASSIGN_OR_RETURN(auto coordinator, Coordinator::Create(store, classes, compiler, {}));
//   ASSIGN_OR_RETURN(v1::Job job, coordinator->CreateJob(spec));
//   ASSIGN_OR_RETURN(RegisterResult r, coordinator->Register(profile, ""));
//   ASSIGN_OR_RETURN(HeartbeatResult h, coordinator->Heartbeat(r.device_id));
//
// Rules:
//  - A job targets device classes, each with a number of devices. CreateJob
//    compiles one plan per target class (a scheme that cannot fit a class's
//    budget fails the call) and stores plans and base weights as blobs.
//  - A heartbeat renews the device's lease. An idle device of a wanted class
//    gets an assignment of the oldest job that still needs one; a device never
//    gets a job it already failed or lost.
//  - When a lease expires (ExpireLeases), the device goes offline and its
//    active assignment is lost; the slot is offered to another device.
//  - A job succeeds when min_devices assignments completed (0 = all wanted),
//    fails at its deadline without them, and its active assignments are
//    cancelled when it ends.
//  - Reports are idempotent: a repeated or older sequence number, or a report
//    for an assignment that has ended, changes nothing.
//
// Thread-safe.
#ifndef FLEETTUNE_SERVER_COORDINATOR_COORDINATOR_H_
#define FLEETTUNE_SERVER_COORDINATOR_COORDINATOR_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/fleettune/v1/agent_service.pb.h"
#include "proto/fleettune/v1/device.pb.h"
#include "proto/fleettune/v1/job.pb.h"
#include "server/compiler/device_classes.h"
#include "server/compiler/plan_compiler.h"
#include "server/store/store.h"

namespace fleettune::server {

struct CoordinatorOptions {
  absl::Duration lease = absl::Seconds(30);
  // Largest base-weights upload accepted in a job spec.
  uint64_t max_weights_bytes = uint64_t{256} << 20;
  // Time source (tests move it by hand).
  std::function<absl::Time()> clock = [] { return absl::Now(); };
  // Called after every state change with the coordinator's mutex released
  // (metrics refresh). May be empty.
  std::function<void()> on_change;
  // Called with the time each plan compilation took. May be empty.
  std::function<void(const std::string& device_class, absl::Duration)> on_compile;
};

struct RegisterResult {
  std::string device_id;
  std::string device_class;
  std::string device_token;  // plaintext, returned once; only its hash is stored
  absl::Duration lease;
};

struct HeartbeatResult {
  absl::Time lease_expires_at;
  std::optional<v1::Assignment> assignment;
};

struct ReportResult {
  bool accepted = false;
  bool cancelled = false;
};

// Counts for /metrics.
struct FleetCounts {
  std::map<std::string, int> online_by_class;
  std::map<v1::JobState, int> jobs_by_state;
};

class Coordinator {
 public:
  // Loads the store's state. The pointers must outlive the coordinator.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(Store* store,
                                                             const DeviceClassRegistry* classes,
                                                             PlanCompiler* compiler,
                                                             CoordinatorOptions options);

  // --- Operators -----------------------------------------------------------
  // InvalidArgument for a bad spec (names the field), NotFound for an unknown
  // class, FailedPrecondition when a scheme does not fit a class budget.
  absl::StatusOr<v1::Job> CreateJob(const v1::JobSpec& spec);
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id) const;
  // Newest first; `states` empty = all.
  std::vector<v1::Job> ListJobs(const std::vector<v1::JobState>& states) const;
  // Cancels a pending or running job (FailedPrecondition once it has ended).
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id);
  std::vector<v1::Device> ListDevices(const std::string& device_class) const;
  const DeviceClassRegistry& device_classes() const { return *classes_; }

  // Blocks until job `job_id` changes after `version` or `timeout` passes;
  // returns the job and its current version. NotFound for an unknown job.
  absl::StatusOr<std::pair<v1::Job, uint64_t>> WaitForJob(const std::string& job_id,
                                                          uint64_t version,
                                                          absl::Duration timeout) const;

  // --- Devices -------------------------------------------------------------
  // `device_id` empty = new device. NotFound for an unknown device_id,
  // FailedPrecondition when no class matches the profile.
  absl::StatusOr<RegisterResult> Register(const v1::DeviceProfile& profile,
                                          const std::string& device_id);
  // The device a token belongs to; Unauthenticated otherwise.
  absl::StatusOr<std::string> AuthenticateDevice(const std::string& token) const;
  absl::StatusOr<HeartbeatResult> Heartbeat(const std::string& device_id);
  absl::StatusOr<ReportResult> ReportMetrics(const std::string& device_id,
                                             const v1::MetricsReport& report);
  absl::Status CompleteAssignment(const std::string& device_id, const v1::MetricsReport& report);
  absl::Status FailAssignment(const std::string& device_id, const std::string& assignment_id,
                              v1::FailureKind kind, const std::string& detail);
  // Up to `max_bytes` of a blob the device's assignment names, from `offset`.
  // PermissionDenied for a blob no assignment of the device names.
  absl::StatusOr<std::string> ReadBlob(const std::string& device_id, const std::string& digest,
                                       uint64_t offset, uint64_t max_bytes,
                                       uint64_t* total_bytes) const;

  // --- Housekeeping --------------------------------------------------------
  // Expires leases and applies deadlines as of now.
  absl::Status Tick();
  FleetCounts Counts() const;
  // Per (job, class) figures of every job, for /metrics.
  std::vector<v1::Job> AllJobs() const;

 private:
  Coordinator(Store* store, const DeviceClassRegistry* classes, PlanCompiler* compiler,
              CoordinatorOptions options);

  struct JobEntry {
    v1::Job job;  // spec, state, created/updated; progress is derived
    // class -> compiled plan summary (also in job.progress[].plan)
    std::map<std::string, v1::PlanSummary> plans;
    uint64_t version = 0;
  };

  absl::Status Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Builds job.progress from assignments and metrics.
  v1::Job Render(const JobEntry& entry) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Applies the completion policy; adds changes to `batch`.
  void Settle(JobEntry& entry, absl::Time now, WriteBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndJob(JobEntry& entry, v1::JobState state, const std::string& detail, absl::Time now,
              WriteBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<v1::Assignment> Assign(DeviceRecord& device, absl::Time now, WriteBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::Assignment*> DeviceAssignment(const std::string& device_id,
                                                   const std::string& assignment_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Commit(WriteBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(JobEntry& entry, absl::Time now, WriteBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Notify();

  Store* const store_;
  const DeviceClassRegistry* const classes_;
  PlanCompiler* const compiler_;
  const CoordinatorOptions options_;

  mutable absl::Mutex mu_;
  std::map<std::string, JobEntry> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, DeviceRecord> devices_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, v1::Assignment> assignments_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, MetricsRecord> metrics_ ABSL_GUARDED_BY(mu_);
  // Devices' lease expiry (not persisted: a restart grants every device a
  // fresh lease, so coordinator downtime does not count against devices).
  std::map<std::string, absl::Time> leases_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> device_by_token_hash_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_COORDINATOR_COORDINATOR_H_
