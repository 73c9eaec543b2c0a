#include "agent/core/capture.h"

#include <grpcpp/support/client_interceptor.h>

#include <cstdint>
#include <cstdio>
#include <mutex>
#include <vector>

namespace fleettune::agent {
namespace {

class CaptureFile {
 public:
  explicit CaptureFile(const std::string& path) : file_(std::fopen(path.c_str(), "ab")) {}
  ~CaptureFile() {
    if (file_ != nullptr) std::fclose(file_);
  }
  void Append(const std::string& method, const grpc::ByteBuffer& message) {
    if (file_ == nullptr) return;
    std::vector<grpc::Slice> slices;
    if (!message.Dump(&slices).ok()) return;
    std::string bytes;
    for (const grpc::Slice& s : slices) {
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    std::lock_guard<std::mutex> lock(mu_);
    const uint32_t name_len = static_cast<uint32_t>(method.size());
    const uint32_t len = static_cast<uint32_t>(bytes.size());
    std::fwrite(&name_len, sizeof(name_len), 1, file_);
    std::fwrite(method.data(), 1, method.size(), file_);
    std::fwrite(&len, sizeof(len), 1, file_);
    std::fwrite(bytes.data(), 1, bytes.size(), file_);
    std::fflush(file_);
  }

 private:
  std::mutex mu_;
  std::FILE* file_;
};

class CaptureInterceptor : public grpc::experimental::Interceptor {
 public:
  CaptureInterceptor(std::shared_ptr<CaptureFile> file, std::string method)
      : file_(std::move(file)), method_(std::move(method)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      if (grpc::ByteBuffer* message = methods->GetSerializedSendMessage()) {
        file_->Append(method_, *message);
      }
    }
    methods->Proceed();
  }

 private:
  std::shared_ptr<CaptureFile> file_;
  std::string method_;
};

class CaptureFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit CaptureFactory(std::shared_ptr<CaptureFile> file) : file_(std::move(file)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    return new CaptureInterceptor(file_, info->method());
  }

 private:
  std::shared_ptr<CaptureFile> file_;
};

}  // namespace

std::shared_ptr<grpc::Channel> CreateAgentChannel(const std::string& target,
                                                  const std::string& capture_path) {
  grpc::ChannelArguments args;
  // Reconnect quickly when the coordinator comes back.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  args.SetMaxReceiveMessageSize(64 << 20);
  // TODO(#3): TLS channel credentials once the coordinator serves TLS.
  if (capture_path.empty()) {
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(
      std::make_unique<CaptureFactory>(std::make_shared<CaptureFile>(capture_path)));
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      target, grpc::InsecureChannelCredentials(), args, std::move(factories));
}

}  // namespace fleettune::agent
