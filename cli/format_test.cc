#include "cli/format.h"

#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "proto/fleettune/v1/fleet_service.pb.h"

namespace fleettune::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// 2025-06-01T12:00:00Z
const absl::Time kNow = absl::FromUnixSeconds(1748779200);

v1::Job JobWithTwoClasses() {
  v1::Job job;
  const bool parsed = google::protobuf::TextFormat::ParseFromString(
      R"pb(
        job_id: "j-000042"
        spec {
          name: "mnist-ft"
          base_model {
            architecture: "mlp"
            layer_sizes: [ 784, 256, 128, 10 ]
            init_seed: 7
          }
          task: "classification"
          dataset: "fashion-mnist"
          hyper_parameters {
            optimizer: OPTIMIZER_KIND_SGD
            learning_rate: 0.05
            momentum: 0.9
            epochs: 5
            batch_size: 64
            seed: 7
          }
          scheme { fit_class_budget: true }
          targets { device_class: "rpi4" devices: 2 }
          targets { device_class: "x86-avx2" devices: 1 }
          completion {
            min_devices: 2
            deadline { seconds: 1748780700 }
          }
        }
        state: JOB_STATE_RUNNING
        created_at { seconds: 1748778888 }
        updated_at { seconds: 1748779190 }
        progress {
          device_class: "rpi4"
          plan {
            plan_digest: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            scheme: "last-k:2"
            trainable_parameters: 33930
            arena_bytes: 1258291
            weight_bytes: 942120
            optimizer_state_bytes: 135720
            total_bytes: 2336131
            budget_bytes: 67108864
            dense_total_bytes: 4718592
          }
          wanted: 2
          assigned: 2
          running: 1
          completed: 1
          ms_per_step: 12.34
          speedup_vs_dense: 2.1
          memory_saving_vs_dense: 2.6
          peak_memory_bytes: 3355443
          accuracy_before: 0.712
          accuracy_after: 0.845
        }
        progress {
          device_class: "x86-avx2"
          plan { scheme: "full" total_bytes: 4718592 budget_bytes: 1073741824 }
          wanted: 1
          assigned: 1
          running: 1
        }
      )pb",
      &job);
  EXPECT_TRUE(parsed);
  return job;
}

TEST(FormatBytes, UsesBinaryUnitsWithOneDecimal) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1.0 KiB");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(3355443), "3.2 MiB");
  EXPECT_EQ(FormatBytes(int64_t{1} << 30), "1.0 GiB");
  EXPECT_EQ(FormatBytes(std::numeric_limits<int64_t>::max()), "8.0 EiB");
}

TEST(FormatBytes, MovesUpAUnitInsteadOfPrinting1024) {
  EXPECT_EQ(FormatBytes(1048575), "1.0 MiB");
  EXPECT_EQ(FormatBytes(1048575 - 60000), "965.4 KiB");
}

TEST(FormatBytes, NegativeIsADash) { EXPECT_EQ(FormatBytes(-1), "-"); }

TEST(FormatPercent, OneDecimal) {
  EXPECT_EQ(FormatPercent(0.845), "84.5%");
  EXPECT_EQ(FormatPercent(0), "0.0%");
  EXPECT_EQ(FormatPercent(1), "100.0%");
  EXPECT_EQ(FormatPercent(std::numeric_limits<double>::quiet_NaN()), "-");
}

TEST(FormatRatio, TwoDecimalsAndX) {
  EXPECT_EQ(FormatRatio(2.1), "2.10x");
  EXPECT_EQ(FormatRatio(std::numeric_limits<double>::infinity()), "-");
}

TEST(FormatCount, GroupsThousands) {
  EXPECT_EQ(FormatCount(0), "0");
  EXPECT_EQ(FormatCount(999), "999");
  EXPECT_EQ(FormatCount(235146), "235,146");
  EXPECT_EQ(FormatCount(-1234567), "-1,234,567");
  EXPECT_EQ(FormatCount(std::numeric_limits<int64_t>::min()), "-9,223,372,036,854,775,808");
}

TEST(FormatShortDuration, KeepsTheTwoLargestUnits) {
  EXPECT_EQ(FormatShortDuration(absl::ZeroDuration()), "0s");
  EXPECT_EQ(FormatShortDuration(absl::Milliseconds(45900)), "45s");
  EXPECT_EQ(FormatShortDuration(absl::Seconds(192)), "3m12s");
  EXPECT_EQ(FormatShortDuration(absl::Minutes(125)), "2h05m");
  EXPECT_EQ(FormatShortDuration(absl::Hours(76)), "3d04h");
  EXPECT_EQ(FormatShortDuration(-absl::Seconds(5)), "5s");
  EXPECT_EQ(FormatShortDuration(absl::InfiniteDuration()), "-");
}

TEST(FormatTimestamp, Rfc3339InUtcOrDash) {
  google::protobuf::Timestamp t;
  EXPECT_EQ(FormatTimestamp(t), "-");
  t.set_seconds(1748779200);
  t.set_nanos(500);
  EXPECT_EQ(FormatTimestamp(t), "2025-06-01T12:00:00Z");
}

TEST(Names, StripEnumPrefixes) {
  EXPECT_EQ(JobStateName(v1::JOB_STATE_RUNNING), "running");
  EXPECT_EQ(JobStateName(static_cast<v1::JobState>(99)), "state 99");
  EXPECT_EQ(DeviceStateName(v1::DEVICE_STATE_OFFLINE), "offline");
  v1::SchemeSpec scheme;
  EXPECT_EQ(SchemeName(scheme), "-");
  scheme.set_preset("last-k:2");
  EXPECT_EQ(SchemeName(scheme), "last-k:2");
  scheme.set_fit_class_budget(true);
  EXPECT_EQ(SchemeName(scheme), "fit");
}

TEST(SanitizeForTerminal, ReplacesControlCharactersKeepsUtf8) {
  EXPECT_EQ(SanitizeForTerminal("a\x1b[2Jb\n\t\x7f"), "a?[2Jb???");
  EXPECT_EQ(SanitizeForTerminal("csi \xc2\x9b"
                                "31m"),
            "csi ?31m");
  EXPECT_EQ(SanitizeForTerminal("Pi 4 \xe2\x86\x92 \xc3\xa9"), "Pi 4 \xe2\x86\x92 \xc3\xa9");
  EXPECT_EQ(DisplayWidth("\xe2\x86\x92\xc3\xa9x"), 3);
}

TEST(RenderTable, AlignsColumnsWithoutTrailingSpaces) {
  const std::string table = RenderTable({{"NAME"}, {"SIZE", Align::kRight}, {"NOTE"}},
                                        {{"a", "1.0 KiB", ""}, {"longer", "12 B", "x"}, {"s"}});
  EXPECT_EQ(table,
            "NAME       SIZE  NOTE\n"
            "a       1.0 KiB\n"
            "longer     12 B  x\n"
            "s\n");
}

TEST(RenderTable, CountsUtf8AsOneColumnAndSanitizesCells) {
  const std::string table = RenderTable({{"A"}, {"B"}}, {{"\xc3\xa9\xc3\xa9", "x"}, {"\x1b", "y"}});
  EXPECT_EQ(table,
            "A   B\n"
            "\xc3\xa9\xc3\xa9  x\n"
            "?   y\n");
}

TEST(FormatProgressTable, OneRowPerClassWithDashesForUnmeasured) {
  EXPECT_EQ(FormatProgressTable(JobWithTwoClasses()),
            "CLASS     SCHEME    WANTED  ASSIGNED  RUNNING  COMPLETED  FAILED  LOST  MS/STEP"
            "  SPEEDUP  MEM SAVING  PEAK MEM  ACCURACY\n"
            "rpi4      last-k:2       2         2        1          1       0     0     12.3"
            "    2.10x       2.60x   3.2 MiB  71.2% -> 84.5%\n"
            "x86-avx2  full           1         1        1          0       0     0        -"
            "        -           -         -  -\n");
}

TEST(FormatPlanTable, ShowsMemoryAgainstBudget) {
  EXPECT_EQ(FormatPlanTable(JobWithTwoClasses()),
            "CLASS     SCHEME    TRAINABLE    ARENA    WEIGHTS  OPT STATE    TOTAL    BUDGET"
            "    DENSE  PLAN\n"
            "rpi4      last-k:2     33,930  1.2 MiB  920.0 KiB  132.5 KiB  2.2 MiB  64.0 MiB"
            "  4.5 MiB  0123456789ab\n"
            "x86-avx2  full              0      0 B        0 B        0 B  4.5 MiB   1.0 GiB"
            "      0 B\n");
}

TEST(FormatPlanTable, NamesTheSlicesOfAMicroBatchedPlan) {
  v1::Job job = JobWithTwoClasses();
  job.mutable_progress(1)->mutable_plan()->set_micro_batches(4);
  const std::string table = FormatPlanTable(job);
  EXPECT_THAT(table, HasSubstr("\nx86-avx2  full (4 slices)  "));
  EXPECT_THAT(table, HasSubstr("\nrpi4      last-k:2  "));
}

TEST(FormatWatchFrame, HeadlineThenProgress) {
  v1::Job job = JobWithTwoClasses();
  job.mutable_progress(1)->set_failed(1);
  const std::string frame = FormatWatchFrame(job, kNow);
  EXPECT_TRUE(absl::StartsWith(
      frame,
      "job j-000042 (mnist-ft): running, 1/3 devices completed (2 needed), 1 failed, "
      "deadline in 25m00s\nCLASS "))
      << frame;
  EXPECT_THAT(frame, Not(HasSubstr("detail:")));

  job.set_state(v1::JOB_STATE_FAILED);
  job.set_state_detail("deadline passed\x1b[2J with 1 of 2 devices");
  EXPECT_THAT(FormatWatchFrame(job, kNow),
              HasSubstr("\ndetail: deadline passed?[2J with 1 of 2 devices\n"));
}

TEST(FormatJob, ShowsSpecPlansAndProgress) {
  const std::string text = FormatJob(JobWithTwoClasses(), kNow);
  EXPECT_TRUE(absl::StartsWith(text,
                               "job         j-000042\n"
                               "name        mnist-ft\n"
                               "state       running\n"
                               "created     2025-06-01T11:54:48Z (5m12s ago)\n"
                               "updated     2025-06-01T11:59:50Z\n"
                               "model       mlp 784-256-128-10\n"
                               "weights     seeded initialization (seed 7)\n"
                               "dataset     fashion-mnist (classification)\n"
                               "optimizer   sgd lr=0.05 momentum=0.9 weight-decay=0\n"
                               "training    epochs=5 batch=64 seed=7\n"
                               "scheme      fit\n"
                               "targets     rpi4:2 x86-avx2:1\n"
                               "completion  succeeds when 2 devices completed, deadline "
                               "2025-06-01T12:25:00Z (in 25m00s)\n"
                               "\nplans\nCLASS "))
      << text;
  EXPECT_THAT(text, HasSubstr("\nprogress\nCLASS     SCHEME    WANTED"));
}

TEST(FormatJobList, OneRowPerJob) {
  v1::ListJobsResponse response;
  *response.add_jobs() = JobWithTwoClasses();
  v1::Job* done = response.add_jobs();
  done->set_job_id("j-000041");
  done->mutable_spec()->set_name("warmup");
  done->mutable_spec()->mutable_scheme()->set_preset("bias-only");
  done->mutable_spec()->add_targets()->set_devices(4);
  done->set_state(v1::JOB_STATE_SUCCEEDED);
  done->mutable_created_at()->set_seconds(1748779200 - 3 * 86400 - 4 * 3600);
  EXPECT_EQ(FormatJobList(response.jobs(), kNow),
            "ID        NAME      STATE      SCHEME     COMPLETED    AGE\n"
            "j-000042  mnist-ft  running    fit              1/3  5m12s\n"
            "j-000041  warmup    succeeded  bias-only        0/4  3d04h\n");
}

TEST(EmptyLists, SayNothingIsThere) {
  EXPECT_EQ(FormatJobList({}, kNow), "no jobs\n");
  EXPECT_EQ(FormatDeviceList({}, kNow), "no devices\n");
  EXPECT_EQ(FormatClassList({}), "no device classes\n");
  EXPECT_EQ(FormatProgressTable(v1::Job()), "no device classes yet\n");
  EXPECT_EQ(FormatPlanTable(v1::Job()), "no plans yet\n");
}

TEST(FormatDeviceList, ShowsHardwareAndHeartbeatAge) {
  v1::ListDevicesResponse response;
  v1::Device* d = response.add_devices();
  d->set_device_id("d-1");
  d->set_device_class("rpi4");
  d->set_state(v1::DEVICE_STATE_ONLINE);
  d->mutable_profile()->set_arch("aarch64");
  d->mutable_profile()->set_cores(4);
  d->mutable_profile()->set_memory_bytes(int64_t{4} << 30);
  d->mutable_last_heartbeat()->set_seconds(1748779200 - 12);
  d->set_assignment_id("a-7");
  EXPECT_EQ(FormatDeviceList(response.devices(), kNow),
            "ID   CLASS  STATE   ARCH     CORES   MEMORY  ACCELERATOR  HEARTBEAT  ASSIGNMENT\n"
            "d-1  rpi4   online  aarch64      4  4.0 GiB  -              12s ago  a-7\n");
}

TEST(FormatClassList, ShowsMatchRulesAndBudget) {
  v1::ListDeviceClassesResponse response;
  v1::DeviceClass* c = response.add_classes();
  c->set_name("x86-avx2");
  c->set_arch("x86_64");
  c->add_required_isa("avx2");
  c->add_required_isa("fma");
  c->set_min_memory_bytes(int64_t{2} << 30);
  c->set_training_memory_budget_bytes(int64_t{1} << 30);
  c->set_threads(4);
  c->set_priority(10);
  c->set_description("x86-64 with AVX2");
  EXPECT_EQ(FormatClassList(response.classes()),
            "NAME      ARCH    ISA       ACCELERATOR  MIN MEMORY   BUDGET  THREADS  PRIORITY  "
            "DESCRIPTION\n"
            "x86-avx2  x86_64  avx2,fma  -               2.0 GiB  1.0 GiB        4        10  "
            "x86-64 with AVX2\n");
}

TEST(FormatJson, OneLineWithZeroFieldsThatParsesBack) {
  v1::GetJobResponse response;
  *response.mutable_job() = JobWithTwoClasses();
  const absl::StatusOr<std::string> json = FormatJson(response);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_THAT(*json, Not(HasSubstr("\n")));
  EXPECT_THAT(*json, HasSubstr(R"("jobId":"j-000042")"));
  EXPECT_THAT(*json, HasSubstr(R"("state":"JOB_STATE_RUNNING")"));
  EXPECT_THAT(*json, HasSubstr(R"("failed":0)"));  // zero values are printed
  v1::GetJobResponse back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(*json, &back).ok());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(back, response));
}

TEST(FormatJson, EmptyListIsAnEmptyArray) {
  const absl::StatusOr<std::string> json = FormatJson(v1::ListJobsResponse());
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(*json, R"({"jobs":[]})");
}

}  // namespace
}  // namespace fleettune::cli
