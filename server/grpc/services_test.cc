// In-process gRPC tests of FleetService and AgentService over the real
// coordinator (SQLite in memory, default device classes, real compiler).
#include <prometheus/text_serializer.h>

#include <cstring>
#include <memory>
#include <regex>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "engine/base/file.h"
#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/fleettune/v1/agent_service.grpc.pb.h"
#include "proto/fleettune/v1/fleet_service.grpc.pb.h"
#include "server/base/sha256.h"
#include "server/grpc/coordinator_server.h"

namespace fleettune::server {
namespace {

using ::testing::HasSubstr;

constexpr char kOperator[] = "operator-token-0123456789";
constexpr char kEnroll[] = "enrollment-token-0123456789";

v1::JobSpec Spec() {
  v1::JobSpec spec;
  spec.set_name("grpc-test");
  spec.set_task("classification");
  spec.set_dataset("digits");
  spec.mutable_base_model()->set_architecture("mlp");
  for (int64_t s : {64, 32, 10}) spec.mutable_base_model()->add_layer_sizes(s);
  auto* h = spec.mutable_hyper_parameters();
  h->set_optimizer(v1::OPTIMIZER_KIND_SGD);
  h->set_learning_rate(0.05f);
  h->set_momentum(0.9f);
  h->set_epochs(1);
  h->set_batch_size(32);
  spec.mutable_scheme()->set_fit_class_budget(true);
  auto* t = spec.add_targets();
  t->set_device_class("x86-avx2");
  t->set_devices(1);
  return spec;
}

v1::DeviceProfile X86() {
  v1::DeviceProfile p;
  p.set_arch("x86_64");
  p.add_isa_features("avx2");
  p.add_isa_features("fma");
  p.set_cores(2);
  p.set_memory_bytes(int64_t{8} << 30);
  return p;
}

class ServicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CoordinatorServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.metrics_address = "";
    o.database_path = ":memory:";
    o.operator_tokens = *TokenSet::FromTokens({kOperator});
    o.enrollment_tokens = *TokenSet::FromTokens({kEnroll});
    o.tick = absl::Milliseconds(50);
    o.max_request_bytes = 1 << 20;
    auto server = CoordinatorServer::Start(std::move(o));
    ASSERT_OK(server.status());
    server_ = std::move(*server);
    channel_ = server_->InProcessChannel();
    fleet_ = v1::FleetService::NewStub(channel_);
    agent_ = v1::AgentService::NewStub(channel_);
  }

  static void Auth(grpc::ClientContext* ctx, const std::string& token) {
    ctx->AddMetadata("authorization", "Bearer " + token);
  }

  v1::RegisterResponse Register() {
    grpc::ClientContext ctx;
    Auth(&ctx, kEnroll);
    v1::RegisterRequest req;
    *req.mutable_profile() = X86();
    v1::RegisterResponse resp;
    grpc::Status s = agent_->Register(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  std::string Fetch(const std::string& token, const std::string& digest, uint64_t offset,
                    int max_messages, grpc::Status* status) {
    grpc::ClientContext ctx;
    Auth(&ctx, token);
    v1::FetchBlobRequest req;
    req.set_digest(digest);
    req.set_offset(offset);
    auto reader = agent_->FetchBlob(&ctx, req);
    std::string data;
    v1::FetchBlobResponse chunk;
    int n = 0;
    while (n < max_messages && reader->Read(&chunk)) {
      EXPECT_EQ(chunk.offset(), offset + data.size());
      data += chunk.data();
      ++n;
    }
    if (n == max_messages) ctx.TryCancel();  // a cut transfer
    *status = reader->Finish();
    return data;
  }

  std::unique_ptr<CoordinatorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::FleetService::Stub> fleet_;
  std::unique_ptr<v1::AgentService::Stub> agent_;
};

TEST_F(ServicesTest, OperatorCallsNeedAValidToken) {
  v1::ListJobsRequest req;
  v1::ListJobsResponse resp;
  {
    grpc::ClientContext ctx;
    grpc::Status s = fleet_->ListJobs(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_THAT(s.error_message(), HasSubstr("operator token required"));
  }
  {
    grpc::ClientContext ctx;
    Auth(&ctx, "wrong-token-wrong-token");
    EXPECT_EQ(fleet_->ListJobs(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    Auth(&ctx, kEnroll);  // an enrollment token is not an operator token
    EXPECT_EQ(fleet_->ListJobs(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    Auth(&ctx, kOperator);
    EXPECT_TRUE(fleet_->ListJobs(&ctx, req, &resp).ok());
  }
}

TEST_F(ServicesTest, BadJobRequestsGetPreciseCodes) {
  auto create = [&](const v1::JobSpec& spec) {
    grpc::ClientContext ctx;
    Auth(&ctx, kOperator);
    v1::CreateJobRequest req;
    *req.mutable_spec() = spec;
    v1::CreateJobResponse resp;
    return fleet_->CreateJob(&ctx, req, &resp);
  };
  v1::JobSpec unknown = Spec();
  unknown.mutable_targets(0)->set_device_class("cray-1");
  grpc::Status s = create(unknown);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("cray-1"));

  v1::JobSpec over = Spec();
  over.mutable_targets(0)->set_device_class("rpi4");
  for (int64_t s2 : {784, 1024, 1024, 10}) over.mutable_base_model()->add_layer_sizes(s2);
  over.mutable_base_model()->clear_layer_sizes();
  for (int64_t s2 : {784, 1024, 1024, 10}) over.mutable_base_model()->add_layer_sizes(s2);
  over.mutable_scheme()->set_preset("full");
  s = create(over);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("over its"));

  v1::JobSpec bad_weights = Spec();
  bad_weights.mutable_base_model()->set_safetensors_weights(std::string(100, '\x07'));
  EXPECT_EQ(create(bad_weights).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::JobSpec huge = Spec();  // over the server's 1 MiB request limit
  huge.mutable_base_model()->set_safetensors_weights(std::string(2 << 20, 'x'));
  EXPECT_EQ(create(huge).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  grpc::ClientContext ctx;
  Auth(&ctx, kOperator);
  v1::GetJobRequest get;
  get.set_job_id("job-000000");
  v1::GetJobResponse resp;
  s = fleet_->GetJob(&ctx, get, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("no job 'job-000000'"));

  grpc::ClientContext list_ctx;
  Auth(&list_ctx, kOperator);
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(fleet_->ListJobs(&list_ctx, v1::ListJobsRequest(), &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 0);  // nothing half-created
}

TEST_F(ServicesTest, AgentRunsAnAssignmentWhileAnOperatorWatches) {
  v1::CreateJobResponse created;
  {
    grpc::ClientContext ctx;
    Auth(&ctx, kOperator);
    v1::CreateJobRequest req;
    *req.mutable_spec() = Spec();
    grpc::Status s = fleet_->CreateJob(&ctx, req, &created);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  const std::string job_id = created.job().job_id();

  // The operator watches until the job ends.
  std::vector<v1::JobState> seen;
  std::thread watcher([&] {
    grpc::ClientContext ctx;
    Auth(&ctx, kOperator);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::WatchJobRequest req;
    req.set_job_id(job_id);
    auto reader = fleet_->WatchJob(&ctx, req);
    v1::WatchJobResponse update;
    while (reader->Read(&update)) seen.push_back(update.job().state());
    EXPECT_TRUE(reader->Finish().ok());
  });

  v1::RegisterResponse reg = Register();
  EXPECT_EQ(reg.device_class(), "x86-avx2");
  v1::HeartbeatResponse hb;
  {
    grpc::ClientContext ctx;
    Auth(&ctx, reg.device_token());
    v1::HeartbeatRequest req;
    req.set_device_id(reg.device_id());
    ASSERT_TRUE(agent_->Heartbeat(&ctx, req, &hb).ok());
  }
  ASSERT_TRUE(hb.has_assignment());
  const v1::Assignment& a = hb.assignment();

  // Fetch the plan with a cut after the first chunk, then resume.
  grpc::Status status;
  std::string head = Fetch(reg.device_token(), a.plan_digest(), 0, 1, &status);
  ASSERT_FALSE(head.empty());
  std::string rest = Fetch(reg.device_token(), a.plan_digest(), head.size(), 1 << 20, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(head.size() + rest.size(), a.plan_bytes());
  EXPECT_EQ(Sha256Hex(head + rest), a.plan_digest());
  Fetch(reg.device_token(), a.plan_digest(), a.plan_bytes() + 1, 10, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  Fetch(reg.device_token(), "nothex", 0, 10, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  Fetch("forged-device-token", a.plan_digest(), 0, 10, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);

  v1::MetricsReport report;
  report.set_assignment_id(a.assignment_id());
  report.set_sequence(1);
  report.set_ms_per_step(1.5);
  report.set_accuracy_before(0.5);
  report.set_accuracy_after(0.9);
  report.set_speedup_vs_dense(1.0);
  report.set_memory_saving_vs_dense(1.0);
  report.set_dense_fits(true);
  {
    grpc::ClientContext ctx;
    Auth(&ctx, reg.device_token());
    v1::ReportMetricsRequest req;
    req.set_device_id(reg.device_id());
    *req.mutable_report() = report;
    v1::ReportMetricsResponse resp;
    ASSERT_TRUE(agent_->ReportMetrics(&ctx, req, &resp).ok());
    EXPECT_TRUE(resp.accepted());
  }
  {
    // Another device's id with this token is refused.
    grpc::ClientContext ctx;
    Auth(&ctx, reg.device_token());
    v1::ReportMetricsRequest req;
    req.set_device_id("dev-someoneelse");
    *req.mutable_report() = report;
    v1::ReportMetricsResponse resp;
    EXPECT_EQ(agent_->ReportMetrics(&ctx, req, &resp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    Auth(&ctx, reg.device_token());
    v1::CompleteAssignmentRequest req;
    req.set_device_id(reg.device_id());
    report.set_sequence(2);
    *req.mutable_final_report() = report;
    v1::CompleteAssignmentResponse resp;
    ASSERT_TRUE(agent_->CompleteAssignment(&ctx, req, &resp).ok());
  }
  watcher.join();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back(), v1::JOB_STATE_SUCCEEDED);

  // /metrics reflects the fleet and the job.
  prometheus::TextSerializer serializer;
  const std::string text = serializer.Serialize(server_->metrics().registry()->Collect());
  EXPECT_THAT(text, HasSubstr("fleettune_agents_online{device_class=\"x86-avx2\"} 1"));
  EXPECT_THAT(text, HasSubstr("fleettune_jobs{state=\"succeeded\"} 1"));
  EXPECT_THAT(text, HasSubstr("fleettune_job_accuracy{device_class=\"x86-avx2\",job=\"" + job_id +
                              "\",when=\"after\"} 0.9"));
  EXPECT_THAT(text, HasSubstr("fleettune_plan_compile_seconds_count{device_class=\"x86-avx2\"} 1"));
  EXPECT_THAT(text, HasSubstr("method=\"CompleteAssignment\""));

  // The shipped dashboards and alert rules use only metrics that exist.
  for (const char* path :
       {"deploy/grafana/fleettune.json", "deploy/prometheus/fleettune_rules.yml"}) {
    ASSERT_OK_AND_ASSIGN(std::string file, engine::ReadFileToString(path));
    static const std::regex kMetric("fleettune_[a-z_]+");
    for (std::sregex_iterator it(file.begin(), file.end(), kMetric), end; it != end; ++it) {
      std::string name = it->str();
      for (const char* suffix : {"_bucket", "_count", "_sum"}) {
        const std::string base = name.substr(0, name.size() - std::strlen(suffix));
        if (absl::EndsWith(name, suffix) && absl::StrContains(text, "# TYPE " + base + " ")) {
          name = base;
        }
      }
      EXPECT_THAT(text, HasSubstr("# TYPE " + name + " ")) << path << " uses " << it->str();
    }
  }
}

TEST_F(ServicesTest, EnrollmentNeedsTheEnrollmentToken) {
  grpc::ClientContext ctx;
  Auth(&ctx, kOperator);
  v1::RegisterRequest req;
  *req.mutable_profile() = X86();
  v1::RegisterResponse resp;
  grpc::Status s = agent_->Register(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), HasSubstr("enrollment"));
}

}  // namespace
}  // namespace fleettune::server
