// Coordinator core, tested without a network against the real SQLite store,
// device classes and plan compiler, with a hand-driven clock.
#include "server/coordinator/coordinator.h"

#include <memory>
#include <string>

#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/sqlite_store.h"

namespace fleettune::server {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

v1::DeviceProfile PiProfile() {
  v1::DeviceProfile p;
  p.set_arch("aarch64");
  p.add_isa_features("asimd");
  p.set_cores(4);
  p.set_memory_bytes(int64_t{4} << 30);
  p.set_board("Raspberry Pi 4 Model B");
  return p;
}

v1::DeviceProfile X86Profile() {
  v1::DeviceProfile p;
  p.set_arch("x86_64");
  p.add_isa_features("avx2");
  p.add_isa_features("fma");
  p.set_cores(8);
  p.set_memory_bytes(int64_t{16} << 30);
  return p;
}

v1::JobSpec Spec(int pis, int x86s) {
  v1::JobSpec spec;
  spec.set_name("adapt-digits");
  spec.set_task("classification");
  spec.set_dataset("opencv-digits");
  spec.mutable_base_model()->set_architecture("mlp");
  for (int64_t s : {784, 256, 128, 10}) spec.mutable_base_model()->add_layer_sizes(s);
  auto* h = spec.mutable_hyper_parameters();
  h->set_optimizer(v1::OPTIMIZER_KIND_SGD);
  h->set_learning_rate(0.05f);
  h->set_momentum(0.9f);
  h->set_epochs(1);
  h->set_batch_size(64);
  spec.mutable_scheme()->set_fit_class_budget(true);
  if (pis > 0) {
    auto* t = spec.add_targets();
    t->set_device_class("rpi4");
    t->set_devices(pis);
  }
  if (x86s > 0) {
    auto* t = spec.add_targets();
    t->set_device_class("x86-avx2");
    t->set_devices(x86s);
  }
  return spec;
}

v1::MetricsReport Report(const std::string& assignment_id, int64_t sequence) {
  v1::MetricsReport r;
  r.set_assignment_id(assignment_id);
  r.set_sequence(sequence);
  r.set_steps_done(10 * sequence);
  r.set_steps_total(100);
  r.set_ms_per_step(2.5);
  r.set_peak_memory_bytes(1 << 20);
  r.set_accuracy_before(0.56);
  r.set_accuracy_after(0.91);
  r.set_speedup_vs_dense(1.8);
  r.set_memory_saving_vs_dense(2.0);
  r.set_dense_fits(false);
  auto* p = r.add_loss_curve();
  p->set_step(10);
  p->set_loss(0.7f);
  return r;
}

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(":memory:"); }

  void Open(const std::string& path) {
    coordinator_.reset();
    store_.reset();
    auto store = OpenSqliteStore(path);
    ASSERT_OK(store.status());
    store_ = std::move(*store);
    CoordinatorOptions options;
    options.lease = absl::Seconds(30);
    options.clock = [this] { return now_; };
    auto c = Coordinator::Create(store_.get(), &classes_, &compiler_, options);
    ASSERT_OK(c.status());
    coordinator_ = std::move(*c);
  }

  // Registers a device and returns its id.
  std::string Enroll(const v1::DeviceProfile& profile) {
    auto r = coordinator_->Register(profile, "");
    EXPECT_OK(r.status());
    return r.ok() ? r->device_id : "";
  }

  absl::Time now_ = absl::FromUnixSeconds(1800000000);
  DeviceClassRegistry classes_ = DeviceClassRegistry::Defaults();
  PlanCompiler compiler_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Coordinator> coordinator_;
};

TEST_F(CoordinatorTest, RunsAJobToSuccessAcrossClasses) {
  ASSERT_OK_AND_ASSIGN(v1::Job job, coordinator_->CreateJob(Spec(1, 1)));
  EXPECT_EQ(job.state(), v1::JOB_STATE_PENDING);
  ASSERT_EQ(job.progress_size(), 2);
  // Each class got its own plan; the small rpi4 budget forces a sparser scheme.
  EXPECT_NE(job.progress(0).plan().plan_digest(), job.progress(1).plan().plan_digest());
  EXPECT_NE(job.progress(0).plan().scheme(), "full");
  EXPECT_EQ(job.progress(1).plan().scheme(), "full");
  EXPECT_LE(job.progress(0).plan().total_bytes(), job.progress(0).plan().budget_bytes());

  const std::string pi = Enroll(PiProfile());
  const std::string x86 = Enroll(X86Profile());
  ASSERT_OK_AND_ASSIGN(HeartbeatResult hp, coordinator_->Heartbeat(pi));
  ASSERT_OK_AND_ASSIGN(HeartbeatResult hx, coordinator_->Heartbeat(x86));
  ASSERT_TRUE(hp.assignment.has_value());
  ASSERT_TRUE(hx.assignment.has_value());
  EXPECT_EQ(hp.assignment->device_class(), "rpi4");
  EXPECT_EQ(hp.assignment->plan_digest(), job.progress(0).plan().plan_digest());
  EXPECT_EQ(hp.assignment->dataset(), "opencv-digits");

  // The plan is fetchable in ranges by the device it was assigned to.
  uint64_t total = 0;
  ASSERT_OK_AND_ASSIGN(std::string head,
                       coordinator_->ReadBlob(pi, hp.assignment->plan_digest(), 0, 100, &total));
  EXPECT_EQ(head.size(), 100u);
  EXPECT_EQ(total, hp.assignment->plan_bytes());
  EXPECT_THAT(coordinator_->ReadBlob(x86, hp.assignment->plan_digest(), 0, 100, &total),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("not part of any")));

  ASSERT_OK_AND_ASSIGN(ReportResult r1,
                       coordinator_->ReportMetrics(pi, Report(hp.assignment->assignment_id(), 1)));
  EXPECT_TRUE(r1.accepted);
  ASSERT_OK(coordinator_->CompleteAssignment(pi, Report(hp.assignment->assignment_id(), 2)));
  ASSERT_OK_AND_ASSIGN(v1::Job mid, coordinator_->GetJob(job.job_id()));
  EXPECT_EQ(mid.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(mid.progress(0).completed(), 1);
  EXPECT_DOUBLE_EQ(mid.progress(0).accuracy_after(), 0.91);

  ASSERT_OK(coordinator_->CompleteAssignment(x86, Report(hx.assignment->assignment_id(), 1)));
  ASSERT_OK_AND_ASSIGN(v1::Job done, coordinator_->GetJob(job.job_id()));
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  // An idle device gets nothing more.
  ASSERT_OK_AND_ASSIGN(HeartbeatResult idle, coordinator_->Heartbeat(pi));
  EXPECT_FALSE(idle.assignment.has_value());
}

TEST_F(CoordinatorTest, RestartKeepsJobsDevicesAssignmentsAndMetrics) {
  const std::string path = ::testing::TempDir() + "/restart.db";
  std::remove(path.c_str());
  Open(path);
  ASSERT_OK_AND_ASSIGN(v1::Job job, coordinator_->CreateJob(Spec(2, 0)));
  const std::string a = Enroll(PiProfile());
  const std::string b = Enroll(PiProfile());
  ASSERT_OK_AND_ASSIGN(HeartbeatResult ha, coordinator_->Heartbeat(a));
  ASSERT_OK_AND_ASSIGN(HeartbeatResult hb, coordinator_->Heartbeat(b));
  ASSERT_OK(coordinator_->ReportMetrics(a, Report(ha.assignment->assignment_id(), 1)).status());
  ASSERT_OK(coordinator_->CompleteAssignment(b, Report(hb.assignment->assignment_id(), 3)));
  ASSERT_OK_AND_ASSIGN(v1::Job before, coordinator_->GetJob(job.job_id()));
  const auto devices_before = coordinator_->ListDevices("");

  Open(path);  // the coordinator restarts mid-job

  ASSERT_OK_AND_ASSIGN(v1::Job after, coordinator_->GetJob(job.job_id()));
  EXPECT_EQ(after.SerializeAsString(), before.SerializeAsString());
  EXPECT_EQ(after.progress(0).running(), 1);
  EXPECT_EQ(after.progress(0).completed(), 1);
  const auto devices_after = coordinator_->ListDevices("");
  ASSERT_EQ(devices_after.size(), devices_before.size());
  for (size_t i = 0; i < devices_after.size(); ++i) {
    EXPECT_EQ(devices_after[i].SerializeAsString(), devices_before[i].SerializeAsString());
  }
  // The running device's last report survived too: resending it is a duplicate.
  ASSERT_OK_AND_ASSIGN(ReportResult resent,
                       coordinator_->ReportMetrics(a, Report(ha.assignment->assignment_id(), 1)));
  EXPECT_FALSE(resent.accepted);
  // The running device carries on where it was, with its old assignment.
  ASSERT_OK_AND_ASSIGN(HeartbeatResult again, coordinator_->Heartbeat(a));
  ASSERT_TRUE(again.assignment.has_value());
  EXPECT_EQ(again.assignment->assignment_id(), ha.assignment->assignment_id());
  ASSERT_OK(coordinator_->CompleteAssignment(a, Report(ha.assignment->assignment_id(), 2)));
  ASSERT_OK_AND_ASSIGN(v1::Job done, coordinator_->GetJob(job.job_id()));
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(CoordinatorTest, ExpiredLeaseLosesTheAssignmentAndFreesTheSlot) {
  ASSERT_OK_AND_ASSIGN(v1::Job job, coordinator_->CreateJob(Spec(1, 0)));
  const std::string a = Enroll(PiProfile());
  const std::string b = Enroll(PiProfile());
  ASSERT_OK_AND_ASSIGN(HeartbeatResult ha, coordinator_->Heartbeat(a));
  ASSERT_TRUE(ha.assignment.has_value());
  ASSERT_OK_AND_ASSIGN(HeartbeatResult hb, coordinator_->Heartbeat(b));
  EXPECT_FALSE(hb.assignment.has_value());  // the only slot is taken

  now_ += absl::Seconds(20);
  ASSERT_OK(coordinator_->Heartbeat(b).status());  // b keeps heartbeating, a goes silent
  now_ += absl::Seconds(15);
  ASSERT_OK(coordinator_->Tick());
  ASSERT_OK_AND_ASSIGN(v1::Job lost, coordinator_->GetJob(job.job_id()));
  EXPECT_EQ(lost.progress(0).lost(), 1);
  EXPECT_EQ(coordinator_->ListDevices("")[0].device_id() == a
                ? coordinator_->ListDevices("")[0].state()
                : coordinator_->ListDevices("")[1].state(),
            v1::DEVICE_STATE_OFFLINE);

  ASSERT_OK_AND_ASSIGN(HeartbeatResult hb2, coordinator_->Heartbeat(b));
  ASSERT_TRUE(hb2.assignment.has_value());  // the slot went to b
  // a's late report changes nothing; a learns its assignment was lost.
  ASSERT_OK_AND_ASSIGN(ReportResult late,
                       coordinator_->ReportMetrics(a, Report(ha.assignment->assignment_id(), 1)));
  EXPECT_FALSE(late.accepted);
  ASSERT_OK_AND_ASSIGN(HeartbeatResult back, coordinator_->Heartbeat(a));
  ASSERT_TRUE(back.assignment.has_value());
  EXPECT_EQ(back.assignment->state(), v1::ASSIGNMENT_STATE_LOST);
  ASSERT_OK_AND_ASSIGN(HeartbeatResult next, coordinator_->Heartbeat(a));
  EXPECT_FALSE(next.assignment.has_value());  // never the same job twice
}

TEST_F(CoordinatorTest, RepeatedReportsAreIdempotent) {
  ASSERT_OK(coordinator_->CreateJob(Spec(1, 0)).status());
  const std::string a = Enroll(PiProfile());
  ASSERT_OK_AND_ASSIGN(HeartbeatResult h, coordinator_->Heartbeat(a));
  const std::string id = h.assignment->assignment_id();
  ASSERT_OK_AND_ASSIGN(ReportResult first, coordinator_->ReportMetrics(a, Report(id, 2)));
  EXPECT_TRUE(first.accepted);
  ASSERT_OK_AND_ASSIGN(ReportResult again, coordinator_->ReportMetrics(a, Report(id, 2)));
  EXPECT_FALSE(again.accepted);
  ASSERT_OK_AND_ASSIGN(ReportResult older, coordinator_->ReportMetrics(a, Report(id, 1)));
  EXPECT_FALSE(older.accepted);
  ASSERT_OK(coordinator_->CompleteAssignment(a, Report(id, 3)));
  ASSERT_OK(coordinator_->CompleteAssignment(a, Report(id, 3)));  // a retry
  ASSERT_OK(coordinator_->FailAssignment(a, id, v1::FAILURE_KIND_INTERNAL, "late"));
  ASSERT_OK_AND_ASSIGN(v1::Job job, coordinator_->GetJob(h.assignment->job_id()));
  EXPECT_EQ(job.progress(0).completed(), 1);
  EXPECT_EQ(job.progress(0).failed(), 0);
}

TEST_F(CoordinatorTest, CancelStopsDevicesOnce) {
  ASSERT_OK_AND_ASSIGN(v1::Job job, coordinator_->CreateJob(Spec(1, 0)));
  const std::string a = Enroll(PiProfile());
  ASSERT_OK_AND_ASSIGN(HeartbeatResult h, coordinator_->Heartbeat(a));
  ASSERT_OK_AND_ASSIGN(v1::Job cancelled, coordinator_->CancelJob(job.job_id()));
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  ASSERT_OK_AND_ASSIGN(ReportResult r,
                       coordinator_->ReportMetrics(a, Report(h.assignment->assignment_id(), 1)));
  EXPECT_TRUE(r.cancelled);
  ASSERT_OK_AND_ASSIGN(HeartbeatResult stop, coordinator_->Heartbeat(a));
  ASSERT_TRUE(stop.assignment.has_value());
  EXPECT_EQ(stop.assignment->state(), v1::ASSIGNMENT_STATE_CANCELLED);
  ASSERT_OK_AND_ASSIGN(HeartbeatResult idle, coordinator_->Heartbeat(a));
  EXPECT_FALSE(idle.assignment.has_value());
  EXPECT_THAT(coordinator_->CancelJob(job.job_id()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("already ended")));
}

TEST_F(CoordinatorTest, DeadlineWithoutEnoughDevicesFailsTheJob) {
  v1::JobSpec spec = Spec(2, 0);
  spec.mutable_completion()->set_min_devices(1);
  spec.mutable_completion()->mutable_deadline()->set_seconds(absl::ToUnixSeconds(now_) + 60);
  ASSERT_OK_AND_ASSIGN(v1::Job job, coordinator_->CreateJob(spec));
  now_ += absl::Seconds(61);
  ASSERT_OK(coordinator_->Tick());
  ASSERT_OK_AND_ASSIGN(v1::Job failed, coordinator_->GetJob(job.job_id()));
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.state_detail(), HasSubstr("deadline passed with 0 of the 1"));
}

TEST_F(CoordinatorTest, BadRequestsGetClearErrors) {
  v1::JobSpec unknown_class = Spec(1, 0);
  unknown_class.mutable_targets(0)->set_device_class("pdp11");
  EXPECT_THAT(coordinator_->CreateJob(unknown_class),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("pdp11")));
  v1::JobSpec over_budget = Spec(1, 0);
  over_budget.mutable_scheme()->set_preset("full");
  EXPECT_THAT(coordinator_->CreateJob(over_budget),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("device class 'rpi4': scheme 'full' needs")));
  v1::JobSpec bad_weights = Spec(1, 0);
  bad_weights.mutable_base_model()->set_safetensors_weights("not a safetensors file");
  EXPECT_THAT(coordinator_->CreateJob(bad_weights),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("safetensors")));
  v1::JobSpec no_targets = Spec(0, 0);
  EXPECT_THAT(coordinator_->CreateJob(no_targets),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("spec.targets is empty")));
  v1::JobSpec bad_min = Spec(1, 0);
  bad_min.mutable_completion()->set_min_devices(5);
  EXPECT_THAT(
      coordinator_->CreateJob(bad_min),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("min_devices must be in [0, 1]")));
  EXPECT_THAT(coordinator_->GetJob("job-nope"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no job 'job-nope'")));
  EXPECT_THAT(coordinator_->Heartbeat("dev-nope"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(coordinator_->AuthenticateDevice("forged"),
              StatusIs(absl::StatusCode::kUnauthenticated));
  v1::DeviceProfile tiny = PiProfile();
  tiny.set_memory_bytes(int64_t{1} << 30);
  EXPECT_THAT(coordinator_->Register(tiny, ""), StatusIs(absl::StatusCode::kFailedPrecondition));
  // Nothing of the failed calls reached the store.
  EXPECT_TRUE(coordinator_->ListJobs({}).empty());
  EXPECT_TRUE(coordinator_->ListDevices("").empty());
}

TEST_F(CoordinatorTest, DeviceTokensAuthenticateTheirDevice) {
  ASSERT_OK_AND_ASSIGN(RegisterResult r, coordinator_->Register(PiProfile(), ""));
  ASSERT_OK_AND_ASSIGN(std::string id, coordinator_->AuthenticateDevice(r.device_token));
  EXPECT_EQ(id, r.device_id);
  // Re-registering rotates the token.
  ASSERT_OK_AND_ASSIGN(RegisterResult again, coordinator_->Register(PiProfile(), r.device_id));
  EXPECT_EQ(again.device_id, r.device_id);
  EXPECT_THAT(coordinator_->AuthenticateDevice(r.device_token),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_OK(coordinator_->AuthenticateDevice(again.device_token).status());
}

}  // namespace
}  // namespace fleettune::server
