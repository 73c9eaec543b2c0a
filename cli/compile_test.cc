#include "cli/compile.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/base/status_matchers.h"
#include "engine/plan/plan_io.h"
#include "gtest/gtest.h"

namespace fleettune::cli {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

TEST(Compile, PrintsTheSummaryAndWritesALoadablePlan) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/mlp.plan";
  std::ostringstream out;
  ASSERT_OK(RunCompile({{"model", "mlp"},
                        {"scheme", "last-k:2"},
                        {"device-class", "rpi4"},
                        {"batch", "64"},
                        {"out", path}},
                       /*json=*/false, &out));
  EXPECT_THAT(out.str(), HasSubstr("scheme           last-k:2"));
  EXPECT_THAT(out.str(), HasSubstr("rpi4 (4 threads, generic kernels)"));
  EXPECT_THAT(out.str(), HasSubstr("GFLOP"));
  EXPECT_THAT(out.str(), HasSubstr("fits"));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan plan, engine::plan::ReadPlan(path));
  EXPECT_EQ(plan.metadata().device_class(), "rpi4");
  EXPECT_EQ(plan.metadata().kernel_isa(), "generic");
  EXPECT_EQ(plan.metadata().trainable_parameters_size(), 4);
  ASSERT_OK(engine::plan::GraphFromProto(plan.graph()).status());
}

TEST(Compile, SchemeFilesAndPartialChannels) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/half.scheme";
  {
    std::ofstream f(path);
    f << "name: \"half-fc3\"\n"
         "rules { pattern: \"fc3.weight\" mode: UPDATE_MODE_CHANNELS channel_fraction: 0.5 }\n"
         "rules { pattern: \"*.bias\" mode: UPDATE_MODE_FULL }\n";
  }
  std::ostringstream out;
  ASSERT_OK(RunCompile({{"model", "mlp"}, {"scheme-file", path}}, false, &out));
  // fc3.weight's first 5 of 10 rows (5 · 128) + the biases (256 + 128 + 10).
  EXPECT_THAT(out.str(), HasSubstr("half-fc3 (4 tensors, 1034 elements trained)"));
  EXPECT_THAT(RunCompile({{"model", "mlp"}, {"scheme-file", path + ".missing"}}, false, &out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--scheme-file")));
}

TEST(Compile, MicroBatchesShrinkTheArena) {
  std::ostringstream whole, sliced;
  ASSERT_OK(RunCompile({{"model", "mlp"}, {"batch", "512"}}, false, &whole));
  ASSERT_OK(
      RunCompile({{"model", "mlp"}, {"batch", "512"}, {"micro-batches", "8"}}, false, &sliced));
  EXPECT_THAT(sliced.str(), HasSubstr("micro-batches    8 a step"));
  EXPECT_THAT(sliced.str(), HasSubstr("staged batch"));
  EXPECT_THAT(whole.str(), ::testing::Not(HasSubstr("micro-batches")));
  std::ostringstream json;
  ASSERT_OK(RunCompile({{"model", "mlp"}, {"batch", "512"}}, true, &json));
  ASSERT_OK(RunCompile({{"model", "mlp"}, {"batch", "512"}, {"micro-batches", "8"}}, true, &json));
  EXPECT_THAT(json.str(), HasSubstr("\"microBatches\":8"));
  // rpi4's 2 MiB: the whole batch of 256 does not fit (2.05 MiB), 2 slices of it do.
  std::ostringstream fitted;
  ASSERT_OK(RunCompile({{"model", "mlp"},
                        {"scheme", "last-k:1"},
                        {"batch", "256"},
                        {"device-class", "rpi4"},
                        {"micro-batches", "fit"}},
                       false, &fitted));
  EXPECT_THAT(fitted.str(), HasSubstr("micro-batches    2 chosen"));
  EXPECT_THAT(fitted.str(), HasSubstr("2.00 MiB: fits"));
  std::ostringstream unfitted;
  ASSERT_OK(RunCompile(
      {{"model", "mlp"}, {"scheme", "last-k:1"}, {"batch", "256"}, {"device-class", "rpi4"}}, false,
      &unfitted));
  EXPECT_THAT(unfitted.str(), HasSubstr("DOES NOT FIT"));
  // Full fine-tuning's weights and momentum alone exceed 2 MiB: the smallest plan is reported.
  std::ostringstream none;
  ASSERT_OK(RunCompile(
      {{"model", "mlp"}, {"batch", "256"}, {"device-class", "rpi4"}, {"micro-batches", "fit"}},
      false, &none));
  EXPECT_THAT(none.str(), HasSubstr("no count of slices fits; this one needs the least memory"));
  EXPECT_THAT(RunCompile({{"model", "mlp"}, {"batch", "8"}, {"micro-batches", "3"}}, false, &json),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--micro-batches")));
  EXPECT_THAT(
      RunCompile({{"model", "mlp"}, {"micro-batches", "2"}, {"optimizer", "adamw"}}, false, &json),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no momentum buffer")));
}

TEST(Compile, JsonIsTheMetadata) {
  std::ostringstream out;
  ASSERT_OK(RunCompile({{"model", "mlp"}, {"optimizer", "adamw"}}, /*json=*/true, &out));
  EXPECT_THAT(out.str(), HasSubstr("\"flopsPerStep\""));
  EXPECT_THAT(out.str(), HasSubstr("\"deviceClass\":\"x86-avx2\""));
}

TEST(Compile, BadFlagsAreNamed) {
  std::ostringstream out;
  EXPECT_THAT(RunCompile({}, false, &out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--model")));
  EXPECT_THAT(RunCompile({{"model", "alexnet"}}, false, &out),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("known: mlp")));
  EXPECT_THAT(RunCompile({{"model", "mlp"}, {"scheme", "most"}}, false, &out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--scheme")));
  EXPECT_THAT(RunCompile({{"model", "mlp"}, {"batch", "2.5"}}, false, &out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--batch")));
  EXPECT_THAT(RunCompile({{"model", "mlp"}, {"momentum", "1"}}, false, &out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--momentum")));
  EXPECT_THAT(RunCompile({{"model", "mlp"}, {"device-class", "toaster"}}, false, &out),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(RunCompile({{"model", "mlp"}, {"device-classes", "/no/such/file"}}, false, &out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--device-classes")));
  EXPECT_THAT(RunCompile({{"model", "mlp"}, {"out", "/no/such/dir/x.plan"}}, false, &out),
              StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace fleettune::cli
