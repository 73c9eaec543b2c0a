#include "agent/inference/inference_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::agent {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A socket path under TEST_TMPDIR, or under /tmp when that is too long for sun_path.
std::string SocketPath(const std::string& name) {
  static std::atomic<int> counter{0};
  const std::string unique = absl::StrCat(name, "-", getpid(), "-", counter++, ".sock");
  const char* tmp = std::getenv("TEST_TMPDIR");
  if (tmp != nullptr) {
    std::string path = absl::StrCat(tmp, "/", unique);
    if (path.size() <= kMaxSocketPathBytes) return path;
  }
  return absl::StrCat("/tmp/ft-", unique);
}

// Doubles every value: shows that the sample arrived intact.
absl::StatusOr<std::vector<float>> Double(absl::Span<const float> x) {
  std::vector<float> out(x.begin(), x.end());
  for (float& v : out) v *= 2;
  return out;
}

InferenceServer::Options DoublingOptions(const std::string& path) {
  InferenceServer::Options options;
  options.socket_path = path;
  options.classifier = Double;
  return options;
}

void ExpectServes(const std::string& path) {
  const std::vector<float> sample = {1.5f, -2.0f, 0.25f};
  absl::StatusOr<std::vector<float>> result = Classify(path, sample, absl::Seconds(10));
  ASSERT_OK(result.status());
  EXPECT_THAT(*result, ElementsAre(3.0f, -4.0f, 0.5f));
}

// A raw client connection, for sending what Classify() never would.
class RawConnection {
 public:
  explicit RawConnection(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr;
    std::memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    const timeval tv = {5, 0};  // a hung server fails the test instead of hanging it
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~RawConnection() { Close(); }

  bool connected() const { return connected_; }
  void Send(const std::string& bytes) {
    ASSERT_EQ(send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  void FinishWriting() { shutdown(fd_, SHUT_WR); }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  // Reads up to `size` bytes until EOF; fewer means the server closed the connection.
  std::string Read(size_t size) {
    std::string out;
    char buffer[4096];
    while (out.size() < size) {
      const ssize_t n = recv(fd_, buffer, std::min(sizeof(buffer), size - out.size()), 0);
      if (n <= 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }
  // True when the server closed the connection (EOF, no more bytes).
  bool AtEof() { return Read(1).empty(); }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

std::string U32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

uint32_t ParseU32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<unsigned char>(s[at + i])} << (8 * i);
  return v;
}

std::string Floats(const std::vector<float>& values) {
  std::string s;
  for (float f : values) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    s += U32(bits);
  }
  return s;
}

// Reads one error response: its status code and message. Fails the test on anything else.
void ExpectErrorReply(RawConnection& conn, absl::StatusCode code, const std::string& substr) {
  const std::string header = conn.Read(8);
  ASSERT_EQ(header.size(), 8u);
  EXPECT_EQ(ParseU32(header, 0), static_cast<uint32_t>(code));
  const std::string message = conn.Read(ParseU32(header, 4));
  EXPECT_THAT(message, HasSubstr(substr));
}

// Garbage gets an error reply or a closed connection: if anything comes back, it is a complete
// error response, and then the connection ends.
void ExpectErrorOrClose(RawConnection& conn) {
  const std::string header = conn.Read(8);
  if (header.empty()) return;
  ASSERT_EQ(header.size(), 8u);
  EXPECT_NE(ParseU32(header, 0), 0u);
  const uint32_t length = ParseU32(header, 4);
  ASSERT_LE(length, kMaxErrorMessageBytes);
  EXPECT_EQ(conn.Read(length).size(), length);
  EXPECT_TRUE(conn.AtEof());
}

TEST(InferenceServer, ClassifiesOverTheSocket) {
  const std::string path = SocketPath("roundtrip");
  InferenceServer server(DoublingOptions(path));
  ASSERT_OK(server.Start());
  ExpectServes(path);
  ASSERT_OK_AND_ASSIGN(std::vector<float> empty, Classify(path, {}));
  EXPECT_TRUE(empty.empty());
}

TEST(InferenceServer, SocketFileIsPrivateToTheUser) {
  const std::string path = SocketPath("mode");
  InferenceServer server(DoublingOptions(path));
  ASSERT_OK(server.Start());
  struct stat st;
  ASSERT_EQ(lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST(InferenceServer, ClassifierErrorReachesTheClientWithItsCode) {
  const std::string path = SocketPath("error");
  InferenceServer::Options options;
  options.socket_path = path;
  options.classifier = [](absl::Span<const float> x) -> absl::StatusOr<std::vector<float>> {
    return absl::InvalidArgumentError(absl::StrCat("sample has ", x.size(), " values; want 4"));
  };
  InferenceServer server(options);
  ASSERT_OK(server.Start());
  EXPECT_THAT(Classify(path, std::vector<float>{1, 2, 3}),
              StatusIs(absl::StatusCode::kInvalidArgument, "sample has 3 values; want 4"));
}

TEST(InferenceServer, ServesSeveralRequestsOnOneConnection) {
  const std::string path = SocketPath("pipeline");
  InferenceServer server(DoublingOptions(path));
  ASSERT_OK(server.Start());
  RawConnection conn(path);
  ASSERT_TRUE(conn.connected());
  conn.Send(U32(2) + Floats({1, 2}) + U32(1) + Floats({-3}));
  EXPECT_EQ(conn.Read(16), U32(0) + U32(2) + Floats({2, 4}));
  EXPECT_EQ(conn.Read(12), U32(0) + U32(1) + Floats({-6}));
  conn.FinishWriting();
  EXPECT_TRUE(conn.AtEof());
}

TEST(InferenceServer, ReplacesAStaleSocketFile) {
  const std::string path = SocketPath("stale");
  {
    // A server that died without removing its socket file.
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr;
    std::memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    close(fd);
  }
  InferenceServer server(DoublingOptions(path));
  ASSERT_OK(server.Start());
  ExpectServes(path);
}

TEST(InferenceServer, RefusesToRemoveAFileThatIsNotASocket) {
  const std::string path = SocketPath("regular");
  std::ofstream(path) << "precious";
  InferenceServer server(DoublingOptions(path));
  EXPECT_THAT(server.Start(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not a socket")));
  std::ifstream in(path);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
  unlink(path.c_str());
}

TEST(InferenceServer, RefusesAPathALiveServerListensOn) {
  const std::string path = SocketPath("live");
  InferenceServer first(DoublingOptions(path));
  ASSERT_OK(first.Start());
  InferenceServer second(DoublingOptions(path));
  EXPECT_THAT(second.Start(),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("another server")));
  ExpectServes(path);
}

TEST(InferenceServer, StopRemovesTheSocketAndAllowsARestart) {
  const std::string path = SocketPath("restart");
  InferenceServer server(DoublingOptions(path));
  ASSERT_OK(server.Start());
  EXPECT_THAT(server.Start(), StatusIs(absl::StatusCode::kFailedPrecondition));
  RawConnection idle(path);  // Stop() must not wait for an idle client
  ASSERT_TRUE(idle.connected());
  server.Stop();
  server.Stop();
  struct stat st;
  EXPECT_NE(lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(idle.AtEof());
  EXPECT_THAT(Classify(path, std::vector<float>{1}),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("cannot connect")));
  ASSERT_OK(server.Start());
  ExpectServes(path);
}

TEST(InferenceServer, RejectsBadOptions) {
  InferenceServer long_path(DoublingOptions("/tmp/" + std::string(120, 'x')));
  EXPECT_THAT(long_path.Start(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("107")));
  InferenceServer::Options no_classifier;
  no_classifier.socket_path = SocketPath("none");
  EXPECT_THAT(InferenceServer(no_classifier).Start(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("classifier")));
  InferenceServer::Options no_timeout = DoublingOptions(SocketPath("timeout"));
  no_timeout.io_timeout = absl::ZeroDuration();
  EXPECT_THAT(InferenceServer(no_timeout).Start(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("io_timeout")));
}

TEST(InferenceServer, AnswersOversizedRequestWithErrorAndKeepsServing) {
  const std::string path = SocketPath("oversized");
  std::atomic<int> calls{0};
  InferenceServer::Options options = DoublingOptions(path);
  options.classifier = [&calls](absl::Span<const float> x) {
    ++calls;
    return Double(x);
  };
  InferenceServer server(options);
  ASSERT_OK(server.Start());
  for (uint32_t n : {kMaxRequestFloats + 1, 0xFFFFFFFFu}) {
    RawConnection conn(path);
    ASSERT_TRUE(conn.connected());
    conn.Send(U32(n));
    ExpectErrorReply(conn, absl::StatusCode::kInvalidArgument, "over the limit");
    EXPECT_TRUE(conn.AtEof());
  }
  EXPECT_EQ(calls.load(), 0);
  ExpectServes(path);
}

TEST(InferenceServer, SurvivesShortHeaderAndTruncatedBody) {
  const std::string path = SocketPath("truncated");
  InferenceServer server(DoublingOptions(path));
  ASSERT_OK(server.Start());
  {
    RawConnection conn(path);
    conn.Send(std::string("\x02\x00", 2));
    conn.FinishWriting();
    ExpectErrorOrClose(conn);
  }
  {
    RawConnection conn(path);
    conn.Send(U32(10) + Floats({1, 2, 3}));
    conn.FinishWriting();
    ExpectErrorOrClose(conn);
  }
  {
    RawConnection conn(path);  // gone without a word, mid-body
    conn.Send(U32(1000) + Floats({1}));
  }
  ExpectServes(path);
}

TEST(InferenceServer, TimesOutSlowClients) {
  const std::string path = SocketPath("slow");
  InferenceServer::Options options = DoublingOptions(path);
  options.io_timeout = absl::Milliseconds(200);
  InferenceServer server(options);
  ASSERT_OK(server.Start());
  RawConnection conn(path);
  conn.Send(U32(4) + Floats({1}));  // and then nothing
  const absl::Time start = absl::Now();
  ExpectErrorReply(conn, absl::StatusCode::kDeadlineExceeded, "timed out");
  EXPECT_TRUE(conn.AtEof());
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  ExpectServes(path);
}

TEST(InferenceServer, SurvivesRandomGarbage) {
  const std::string path = SocketPath("garbage");
  InferenceServer::Options options = DoublingOptions(path);
  options.io_timeout = absl::Milliseconds(300);
  InferenceServer server(options);
  ASSERT_OK(server.Start());
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    std::string bytes(std::uniform_int_distribution<int>(0, 64)(rng), '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    if (round % 2 == 0 && bytes.size() >= 4) bytes[3] = 0;  // plausible sizes reach the body
    RawConnection conn(path);
    ASSERT_TRUE(conn.connected());
    if (!bytes.empty()) conn.Send(bytes);
    conn.FinishWriting();
    // Whatever comes back is well framed; the connection then ends.
    while (true) {
      const std::string header = conn.Read(8);
      if (header.size() < 8) break;
      const uint32_t length = ParseU32(header, 4);
      ASSERT_LE(length, kMaxRequestFloats * 4);
      ASSERT_EQ(conn.Read(ParseU32(header, 0) == 0 ? length * 4 : length).size(),
                ParseU32(header, 0) == 0 ? length * 4 : length);
    }
  }
  ExpectServes(path);
}

TEST(InferenceServer, QueuesConnectionsOverTheLimit) {
  const std::string path = SocketPath("busy");
  InferenceServer::Options options = DoublingOptions(path);
  options.max_connections = 1;
  InferenceServer server(options);
  ASSERT_OK(server.Start());
  auto holder = std::make_unique<RawConnection>(path);
  holder->Send(U32(1) + Floats({1}));
  ASSERT_EQ(holder->Read(12), U32(0) + U32(1) + Floats({2}));  // it holds the only slot now

  EXPECT_THAT(Classify(path, std::vector<float>{1}, absl::Milliseconds(300)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  absl::StatusOr<std::vector<float>> waited;
  std::thread waiter([&] { waited = Classify(path, std::vector<float>{2}, absl::Seconds(10)); });
  absl::SleepFor(absl::Milliseconds(100));
  holder.reset();
  waiter.join();
  ASSERT_OK(waited.status());
  EXPECT_THAT(*waited, ElementsAre(4.0f));
}

TEST(InferenceServer, ServesConcurrentClients) {
  const std::string path = SocketPath("concurrent");
  InferenceServer server(DoublingOptions(path));
  ASSERT_OK(server.Start());
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        const std::vector<float> sample(100, static_cast<float>(t * 100 + i));
        absl::StatusOr<std::vector<float>> r = Classify(path, sample);
        if (!r.ok() || r->size() != 100 || (*r)[99] != 2 * sample[99]) {
          if (failures++ == 0) ADD_FAILURE() << r.status();
        }
      }
    });
  }
  for (std::thread& c : clients) c.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(Classify, NoServerIsUnavailable) {
  EXPECT_THAT(Classify(SocketPath("nobody"), std::vector<float>{1}),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST(Classify, RejectsOversizedSampleLocally) {
  const std::vector<float> sample(kMaxRequestFloats + 1);
  EXPECT_THAT(Classify(SocketPath("big"), sample),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("over the limit")));
}

// A fake server that answers every request with `reply`, for checking the client's parser.
void ExpectClientRejectsReply(const std::string& reply, absl::StatusCode code,
                              const std::string& substr) {
  const std::string path = SocketPath("fake");
  const int listener = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listener, 1), 0);
  std::thread fake([&] {
    const int fd = accept(listener, nullptr, nullptr);
    char request[8];
    recv(fd, request, sizeof(request), MSG_WAITALL);
    send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
    close(fd);
  });
  EXPECT_THAT(Classify(path, std::vector<float>{1}, absl::Seconds(5)),
              StatusIs(code, HasSubstr(substr)));
  fake.join();
  close(listener);
  unlink(path.c_str());
}

TEST(Classify, RejectsMalformedResponses) {
  ExpectClientRejectsReply(U32(0) + U32(0xFFFFFFFF), absl::StatusCode::kDataLoss, "probabilities");
  ExpectClientRejectsReply(U32(0) + U32(3) + Floats({1}), absl::StatusCode::kDataLoss,
                           "closed inside");
  ExpectClientRejectsReply(U32(5) + U32(1 << 30), absl::StatusCode::kDataLoss, "error message");
  ExpectClientRejectsReply(U32(999) + U32(4) + "oops", absl::StatusCode::kUnknown, "oops");
  ExpectClientRejectsReply("", absl::StatusCode::kUnavailable, "before responding");
}

}  // namespace
}  // namespace fleettune::agent
