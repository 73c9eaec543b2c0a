// Checks that fleettune_cc_proto(grpc = True) produces a service that compiles,
// links and serves: one call over an in-process channel, no network.
#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tools/build_defs/testdata/echo.grpc.pb.h"
#include "tools/build_defs/testdata/echo.pb.h"

namespace fleettune::testing::v1 {
namespace {

class EchoServiceImpl final : public EchoService::Service {
 public:
  grpc::Status Echo(grpc::ServerContext*, const EchoRequest* request,
                    EchoResponse* response) override {
    if (request->text().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty text");
    }
    response->set_text("echo: " + request->text());
    return grpc::Status::OK;
  }
};

class GrpcCodegenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = EchoService::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  EchoServiceImpl service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<EchoService::Stub> stub_;
};

TEST_F(GrpcCodegenTest, InProcessCallReturnsResponse) {
  grpc::ClientContext context;
  EchoRequest request;
  request.set_text("hello");
  EchoResponse response;
  grpc::Status status = stub_->Echo(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.text(), "echo: hello");
}

TEST_F(GrpcCodegenTest, InProcessCallCarriesErrorStatus) {
  grpc::ClientContext context;
  EchoResponse response;
  grpc::Status status = stub_->Echo(&context, EchoRequest(), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "empty text");
}

}  // namespace
}  // namespace fleettune::testing::v1
