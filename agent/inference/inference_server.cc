#include "agent/inference/inference_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/base/status_macros.h"

namespace fleettune::agent {
namespace {

constexpr bool kLittleEndianHost = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
constexpr int kListenBacklog = 64;
// The most a refused connection may hold up the accept loop.
constexpr absl::Duration kRefusalReplyTimeout = absl::Milliseconds(100);

// --- Wire encoding -------------------------------------------------------------------------

void PutU32(std::string* out, uint32_t v) {
  const char bytes[4] = {static_cast<char>(v), static_cast<char>(v >> 8),
                         static_cast<char>(v >> 16), static_cast<char>(v >> 24)};
  out->append(bytes, 4);
}

uint32_t GetU32(const unsigned char* b) {
  return uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
}

void PutFloats(std::string* out, absl::Span<const float> values) {
  if (kLittleEndianHost) {
    out->append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
    return;
  }
  for (float f : values) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    PutU32(out, bits);
  }
}

// `values` was filled with raw little-endian bytes; makes them host floats.
void FloatsFromWire(absl::Span<float> values) {
  if (kLittleEndianHost) return;
  for (float& f : values) {
    unsigned char b[4];
    std::memcpy(b, &f, sizeof(b));
    const uint32_t bits = GetU32(b);
    std::memcpy(&f, &bits, sizeof(f));
  }
}

std::string EncodeError(const absl::Status& status) {
  const absl::string_view message = status.message().substr(0, kMaxErrorMessageBytes);
  std::string out;
  PutU32(&out, static_cast<uint32_t>(status.code()));
  PutU32(&out, static_cast<uint32_t>(message.size()));
  out.append(message.data(), message.size());
  return out;
}

std::string EncodeProbabilities(absl::Span<const float> probabilities) {
  std::string out;
  out.reserve(8 + probabilities.size() * sizeof(float));
  PutU32(&out, 0);
  PutU32(&out, static_cast<uint32_t>(probabilities.size()));
  PutFloats(&out, probabilities);
  return out;
}

// --- Socket I/O with deadlines -------------------------------------------------------------

// SO_RCVTIMEO / SO_SNDTIMEO bound each blocking call; a zero timeval would mean "forever".
void SetSocketTimeout(int fd, int option, absl::Duration timeout) {
  const timeval tv = absl::ToTimeval(std::max(timeout, absl::Milliseconds(1)));
  setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv));
}

// Reads exactly `size` bytes, all by `deadline`. OutOfRange: the peer closed before the first
// byte (a clean end); DataLoss: it closed after some; DeadlineExceeded; Unavailable: any other
// socket error.
absl::Status ReadFull(int fd, void* data, size_t size, absl::Time deadline,
                      absl::string_view what) {
  char* p = static_cast<char*>(data);
  size_t done = 0;
  while (done < size) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("timed out reading ", what, " (", done, " of ", size, " bytes)"));
    }
    SetSocketTimeout(fd, SO_RCVTIMEO, left);
    const ssize_t n = recv(fd, p + done, size - done, 0);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n == 0) {
      if (done == 0) return absl::OutOfRangeError(absl::StrCat("connection closed before ", what));
      return absl::DataLossError(
          absl::StrCat("connection closed inside ", what, " (", done, " of ", size, " bytes)"));
    } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
      return absl::UnavailableError(
          absl::StrCat("reading ", what, " failed: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

// Writes all of `bytes` by `deadline`; Unavailable if the peer went away, DeadlineExceeded.
absl::Status WriteFull(int fd, absl::string_view bytes, absl::Time deadline) {
  size_t done = 0;
  while (done < bytes.size()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("timed out writing");
    SetSocketTimeout(fd, SO_SNDTIMEO, left);
    // MSG_NOSIGNAL: a peer that hung up must not kill the process with SIGPIPE.
    const ssize_t n = send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n >= 0) {
      done += static_cast<size_t>(n);
    } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
      return absl::UnavailableError(absl::StrCat("writing failed: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSocketPath(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("inference socket path is empty");
  if (path.size() > kMaxSocketPathBytes) {
    return absl::InvalidArgumentError(absl::StrCat("inference socket path ", path, " has ",
                                                   path.size(), " bytes; Unix sockets allow ",
                                                   kMaxSocketPathBytes));
  }
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("inference socket path contains a NUL byte");
  }
  return absl::OkStatus();
}

sockaddr_un SocketAddress(const std::string& path) {
  sockaddr_un addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());  // CheckSocketPath bounds the size
  return addr;
}

// Removes a socket file nobody listens on, so a crashed server's leftover does not block a
// restart. Refuses to touch anything else.
absl::Status RemoveStaleSocket(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": exists and is not a socket; not removing it"));
  }
  const int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (probe < 0) return absl::ErrnoToStatus(errno, "socket() failed");
  const sockaddr_un addr = SocketAddress(path);
  const int connected = connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  close(probe);
  // EAGAIN: a live server whose backlog is full.
  if (connected == 0 || err == EAGAIN) {
    return absl::AlreadyExistsError(absl::StrCat(path, ": another server is listening there"));
  }
  if (err != ECONNREFUSED) {
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot tell whether the socket is live"));
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot remove the stale socket"));
  }
  return absl::OkStatus();
}

}  // namespace

InferenceServer::InferenceServer(Options options) : options_(std::move(options)) {}

InferenceServer::~InferenceServer() { Stop(); }

absl::Status InferenceServer::Start() {
  const std::string& path = options_.socket_path;
  RETURN_IF_ERROR(CheckSocketPath(path));
  if (!options_.classifier) return absl::InvalidArgumentError("inference server has no classifier");
  if (options_.io_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("io_timeout ", absl::FormatDuration(options_.io_timeout), " is not positive"));
  }
  if (options_.max_connections < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_connections ", options_.max_connections, " is below 1"));
  }
  {
    absl::MutexLock lock(&mu_);
    if (running_) return absl::FailedPreconditionError("inference server already started");
  }
  RETURN_IF_ERROR(RemoveStaleSocket(path));

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket() failed");
  bool bound = false;
  absl::Cleanup undo = [&] {
    close(fd);
    if (bound) unlink(path.c_str());
  };
  // Linux's bind() gives the file the socket inode's mode (less the umask), so the file is 0600
  // from the start; on other kernels the chmod() below sets it. Both happen before listen(), and
  // nobody can connect before that.
  fchmod(fd, 0600);
  const sockaddr_un addr = SocketAddress(path);
  if (bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno == EADDRINUSE) {
      return absl::AlreadyExistsError(absl::StrCat(path, ": created by someone else meanwhile"));
    }
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": bind failed"));
  }
  bound = true;
  if (chmod(path.c_str(), 0600) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": chmod 0600 failed"));
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot stat"));
  }
  if (listen(fd, kListenBacklog) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": listen failed"));
  }
  int wake[2];
  if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) return absl::ErrnoToStatus(errno, "pipe2 failed");

  std::move(undo).Cancel();
  listen_fd_ = fd;
  wake_read_fd_ = wake[0];
  wake_write_fd_ = wake[1];
  socket_dev_ = st.st_dev;
  socket_ino_ = st.st_ino;
  {
    absl::MutexLock lock(&mu_);
    running_ = true;
    stopping_ = false;
  }
  accept_thread_ = std::thread(&InferenceServer::AcceptLoop, this);
  return absl::OkStatus();
}

void InferenceServer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (!running_ || stopping_) return;
    stopping_ = true;
  }
  Wake();
  accept_thread_.join();

  // Shutting a socket down wakes a thread blocked reading it; the fds stay open (closed only
  // after the join), so no fd number can be reused under a running thread.
  std::list<Connection> all;
  {
    absl::MutexLock lock(&mu_);
    for (Connection& c : connections_) shutdown(c.fd, SHUT_RDWR);
    all.splice(all.end(), connections_);
  }
  for (Connection& c : all) {
    c.thread.join();
    close(c.fd);
  }

  // Remove the socket file only if it is still ours: a new server may have replaced it.
  struct stat st;
  if (lstat(options_.socket_path.c_str(), &st) == 0 && st.st_dev == socket_dev_ &&
      st.st_ino == socket_ino_) {
    unlink(options_.socket_path.c_str());
  }
  close(listen_fd_);
  close(wake_read_fd_);
  close(wake_write_fd_);
  listen_fd_ = wake_read_fd_ = wake_write_fd_ = -1;

  absl::MutexLock lock(&mu_);
  running_ = false;
  stopping_ = false;
}

void InferenceServer::Wake() {
  const char byte = 0;
  // The pipe is non-blocking: when it is full, a wake-up is already pending.
  [[maybe_unused]] ssize_t unused = write(wake_write_fd_, &byte, 1);
}

void InferenceServer::ReapFinished() {
  std::list<Connection> finished;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto next = std::next(it);
      if (it->done) finished.splice(finished.end(), connections_, it);
      it = next;
    }
  }
  for (Connection& c : finished) {
    c.thread.join();
    close(c.fd);
  }
}

void InferenceServer::AcceptLoop() {
  while (true) {
    // At the connection limit, stop accepting: new clients wait in the listen backlog (bounded
    // by their own timeouts) until a connection ends, rather than being turned away.
    bool full;
    {
      absl::MutexLock lock(&mu_);
      int active = 0;
      for (const Connection& c : connections_) active += c.done ? 0 : 1;
      full = active >= options_.max_connections;
    }
    pollfd fds[2] = {{wake_read_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    if (poll(fds, full ? 1 : 2, -1) < 0) {
      if (errno != EINTR) absl::SleepFor(absl::Milliseconds(10));
      continue;
    }
    if (fds[0].revents != 0) {
      char drain[64];
      while (read(wake_read_fd_, drain, sizeof(drain)) > 0) {
      }
    }
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    ReapFinished();
    if (full || (fds[1].revents & POLLIN) == 0) continue;

    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of fds or memory: back off rather than spin on a listener that stays readable.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        absl::SleepFor(absl::Milliseconds(50));
      }
      continue;
    }
    bool started = true;
    {
      absl::MutexLock lock(&mu_);
      connections_.emplace_back();
      Connection* c = &connections_.back();
      c->fd = fd;
      try {
        c->thread = std::thread([this, c] {
          ServeConnection(c->fd);
          {
            absl::MutexLock lock(&mu_);
            c->done = true;
          }
          Wake();
        });
      } catch (const std::system_error&) {
        connections_.pop_back();
        started = false;
      }
    }
    if (!started) {
      WriteFull(fd,
                EncodeError(absl::ResourceExhaustedError("inference server cannot start a thread")),
                absl::Now() + kRefusalReplyTimeout)
          .IgnoreError();
      close(fd);
    }
  }
}

void InferenceServer::ServeConnection(int fd) {
  const auto reply_and_close = [&](const absl::Status& status) {
    WriteFull(fd, EncodeError(status), absl::Now() + options_.io_timeout).IgnoreError();
  };
  // The socket file's mode already keeps other users out; this also covers a file whose mode
  // someone loosened, or a socket passed on by its owner.
  ucred peer;
  socklen_t peer_size = sizeof(peer);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_size) != 0 ||
      (peer.uid != geteuid() && peer.uid != 0)) {
    reply_and_close(absl::PermissionDeniedError("inference is for the device's own user only"));
    return;
  }
  std::vector<float> sample;
  while (true) {
    const absl::Time deadline = absl::Now() + options_.io_timeout;
    unsigned char header[4];
    absl::Status status = ReadFull(fd, header, sizeof(header), deadline, "request header");
    if (absl::IsOutOfRange(status)) return;  // the client is done
    if (!status.ok()) return reply_and_close(status);
    const uint32_t n = GetU32(header);
    if (n > kMaxRequestFloats) {
      return reply_and_close(absl::InvalidArgumentError(
          absl::StrCat("request of ", n, " floats is over the limit of ", kMaxRequestFloats)));
    }
    sample.resize(n);
    status = ReadFull(fd, sample.data(), n * sizeof(float), deadline,
                      absl::StrCat("request body of ", n, " floats"));
    if (absl::IsOutOfRange(status)) {
      status = absl::DataLossError(
          absl::StrCat("connection closed after a header of ", n, " floats, before the body"));
    }
    if (!status.ok()) return reply_and_close(status);
    FloatsFromWire(absl::MakeSpan(sample));

    absl::StatusOr<std::vector<float>> probabilities = options_.classifier(sample);
    std::string reply;
    if (!probabilities.ok()) {
      reply = EncodeError(probabilities.status());
    } else if (probabilities->size() > kMaxResponseFloats) {
      reply = EncodeError(absl::InternalError(
          absl::StrCat("classifier returned ", probabilities->size(),
                       " probabilities, over the limit of ", kMaxResponseFloats)));
    } else {
      reply = EncodeProbabilities(*probabilities);
    }
    if (!WriteFull(fd, reply, absl::Now() + options_.io_timeout).ok()) return;
  }
}

absl::StatusOr<std::vector<float>> Classify(const std::string& socket_path,
                                            absl::Span<const float> sample,
                                            absl::Duration timeout) {
  RETURN_IF_ERROR(CheckSocketPath(socket_path));
  if (sample.size() > kMaxRequestFloats) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sample of ", sample.size(), " floats is over the limit of ", kMaxRequestFloats));
  }
  const absl::Time deadline = absl::Now() + timeout;
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket() failed");
  absl::Cleanup closer = [fd] { close(fd); };

  // A blocking connect() waits while the server's backlog is full, bounded by SO_SNDTIMEO.
  SetSocketTimeout(fd, SO_SNDTIMEO, timeout);
  const sockaddr_un addr = SocketAddress(socket_path);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    const std::string where = absl::StrCat(socket_path, ": cannot connect: ", std::strerror(err));
    if (err == ENOENT || err == ECONNREFUSED) return absl::UnavailableError(where);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(where);
    if (err == EAGAIN || err == EINPROGRESS || err == ETIMEDOUT) {
      return absl::DeadlineExceededError(where);
    }
    return absl::ErrnoToStatus(err, where);
  }

  std::string request;
  request.reserve(4 + sample.size() * sizeof(float));
  PutU32(&request, static_cast<uint32_t>(sample.size()));
  PutFloats(&request, sample);
  // If the server refuses mid-request (busy, or it dislikes the sample) it still answers: read
  // that answer before reporting the write error.
  const absl::Status written = WriteFull(fd, request, deadline);

  const auto read_exact = [&](void* data, size_t size, absl::string_view what) -> absl::Status {
    absl::Status s = ReadFull(fd, data, size, deadline, what);
    if (absl::IsOutOfRange(s)) {
      if (!written.ok()) return written;
      return absl::UnavailableError(
          absl::StrCat(socket_path, ": the server closed the connection before responding"));
    }
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(socket_path, ": ", s.message()));
    return s;
  };
  unsigned char header[8];
  RETURN_IF_ERROR(read_exact(header, sizeof(header), "response header"));
  const uint32_t code = GetU32(header);
  const uint32_t count = GetU32(header + 4);
  if (code == 0) {
    if (count > kMaxResponseFloats) {
      return absl::DataLossError(absl::StrCat(socket_path, ": response claims ", count,
                                              " probabilities, over the limit of ",
                                              kMaxResponseFloats));
    }
    std::vector<float> probabilities(count);
    RETURN_IF_ERROR(
        read_exact(probabilities.data(), count * sizeof(float), "response probabilities"));
    FloatsFromWire(absl::MakeSpan(probabilities));
    return probabilities;
  }
  if (count > kMaxErrorMessageBytes) {
    return absl::DataLossError(absl::StrCat(socket_path, ": error message of ", count,
                                            " bytes is over the limit of ", kMaxErrorMessageBytes));
  }
  std::string message(count, '\0');
  RETURN_IF_ERROR(read_exact(message.data(), count, "response error message"));
  const absl::StatusCode status_code =
      code <= static_cast<uint32_t>(absl::StatusCode::kUnauthenticated)
          ? static_cast<absl::StatusCode>(code)
          : absl::StatusCode::kUnknown;
  return absl::Status(status_code, message);
}

}  // namespace fleettune::agent
