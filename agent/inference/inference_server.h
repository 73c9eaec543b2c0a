// Local inference with the personalized model, over a Unix domain socket.
//
// The personalized weights never leave the device, so neither does inference: the endpoint is a
// Unix socket that only the agent's user (and root) can open, never a network port.
//
//   InferenceServer server({.socket_path = "/run/fleettune/infer.sock", .classifier = classify});
//   RETURN_IF_ERROR(server.Start());
//   ...
//   ASSIGN_OR_RETURN(std::vector<float> probs, Classify("/run/fleettune/infer.sock", sample));
//   server.Stop();
//
// Wire protocol (all integers and floats little-endian, IEEE-754 float32):
//   request   uint32 n, then n float32: one sample.            n <= kMaxRequestFloats
//   response  uint32 status = 0, uint32 k, then k float32: class probabilities, or
//             uint32 status != 0 (an absl::StatusCode), uint32 len, then len bytes of message.
// A connection may carry any number of requests, one after another. After a classifier error
// the connection stays usable; after a framing error (oversized n, a request that stops early
// or arrives too slowly) the server sends an error response if it still can and closes the
// connection. A request that ends inside its 4-byte header or its body gets its connection
// closed; the server itself never stops for bad input.
//
// Security: Start() makes the socket file mode 0600 before the socket accepts connections, and
// each connection's peer (SO_PEERCRED) must be the server's own effective user or root. Start()
// replaces a stale socket file (one nobody listens on) but refuses to remove any other kind of
// file or a socket that a live server answers on.
//
// Thread-safety: Start() and Stop() must not race each other; Classify() may be called from any
// thread.
#ifndef FLEETTUNE_AGENT_INFERENCE_INFERENCE_SERVER_H_
#define FLEETTUNE_AGENT_INFERENCE_INFERENCE_SERVER_H_

#include <sys/types.h>

#include <cstdint>
#include <list>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "agent/inference/classifier.h"

namespace fleettune::agent {

// Largest sample a request may carry, and largest probability vector a response may carry.
inline constexpr uint32_t kMaxRequestFloats = uint32_t{1} << 20;
inline constexpr uint32_t kMaxResponseFloats = uint32_t{1} << 20;
// Error messages are cut to this many bytes on the wire.
inline constexpr uint32_t kMaxErrorMessageBytes = 4096;
// sockaddr_un::sun_path holds 108 bytes including the terminating NUL.
inline constexpr size_t kMaxSocketPathBytes = 107;

class InferenceServer {
 public:
  struct Options {
    // Where the socket file goes; at most kMaxSocketPathBytes bytes.
    std::string socket_path;
    // Called on connection threads, possibly concurrently; see classifier.h.
    Classifier classifier;
    // A request (header and body) must arrive within this time, counted from when the server
    // starts waiting for it; an idle connection is closed after it. Also bounds each response
    // write.
    absl::Duration io_timeout = absl::Seconds(10);
    // Connections served at once. Beyond that the server stops accepting: new clients wait in the
    // listen backlog, bounded by their own timeouts, until a connection ends.
    int max_connections = 16;
  };

  explicit InferenceServer(Options options);
  // Stops the server.
  ~InferenceServer();

  InferenceServer(const InferenceServer&) = delete;
  InferenceServer& operator=(const InferenceServer&) = delete;

  // Start()
  //
  // Creates the socket and starts serving on a background thread. Errors: InvalidArgument for
  // an empty or too long path, no classifier, a non-positive timeout or connection limit;
  // FailedPrecondition if already started or the path holds something other than a socket;
  // AlreadyExists if a live server answers on the path; the errno-derived code if creating the
  // socket fails. On error nothing is left running and no socket file is left behind.
  absl::Status Start();

  // Stop()
  //
  // Stops accepting, closes every connection (a classification in progress finishes first),
  // joins all threads and removes the socket file if it is still the one Start() created.
  // Idempotent; a stopped server may be started again.
  void Stop();

  const std::string& socket_path() const { return options_.socket_path; }

 private:
  struct Connection {
    int fd = -1;
    std::thread thread;
    bool done = false;  // guarded by mu_
  };

  void AcceptLoop();
  void ServeConnection(int fd);
  // Joins and closes the connections whose threads have finished.
  void ReapFinished();
  void Wake();

  const Options options_;
  int listen_fd_ = -1;
  int wake_read_fd_ = -1;  // a byte here wakes the accept loop: Stop() or a finished connection
  int wake_write_fd_ = -1;
  dev_t socket_dev_ = 0;  // identity of the socket file we created, so Stop() removes only it
  ino_t socket_ino_ = 0;
  std::thread accept_thread_;

  absl::Mutex mu_;
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // A list, so that a connection thread's pointer to its entry stays valid.
  std::list<Connection> connections_ ABSL_GUARDED_BY(mu_);
};

// Classify()
//
// Sends `sample` to the server at `socket_path` on a new connection and returns the class
// probabilities. Every socket read and write must finish before `timeout` from the call.
// Errors: InvalidArgument for a sample over kMaxRequestFloats values or a path over
// kMaxSocketPathBytes; Unavailable when no server listens there or the connection breaks;
// PermissionDenied when the socket is not ours; DeadlineExceeded on timeout; DataLoss for a
// malformed response; otherwise the code and message the server sent (the classifier's error).
absl::StatusOr<std::vector<float>> Classify(const std::string& socket_path,
                                            absl::Span<const float> sample,
                                            absl::Duration timeout = absl::Seconds(30));

}  // namespace fleettune::agent

#endif  // FLEETTUNE_AGENT_INFERENCE_INFERENCE_SERVER_H_
