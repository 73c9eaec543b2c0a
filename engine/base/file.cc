#include "engine/base/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"

namespace fleettune::engine {

absl::StatusOr<std::string> ReadFileToString(const std::string& path, uint64_t max_bytes) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot open"));
  }
  absl::Cleanup closer = [fd] { close(fd); };
  struct stat st;
  if (fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot stat"));
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", st.st_size, " bytes, over the limit of ", max_bytes));
  }
  std::string bytes;
  bytes.reserve(static_cast<size_t>(st.st_size));
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat(path, ": read failed"));
    }
    if (n == 0) break;
    bytes.append(buffer, static_cast<size_t>(n));
    if (bytes.size() > max_bytes) {  // the file grew since fstat
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": over the limit of ", max_bytes, " bytes"));
    }
  }
  return bytes;
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes) {
  std::string temp_path = absl::StrCat(path, ".tmp.XXXXXX");
  int fd = mkstemp(temp_path.data());
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot create a temporary file"));
  }
  auto remove_temp = absl::MakeCleanup([&] {
    if (fd >= 0) close(fd);
    unlink(temp_path.c_str());
  });
  const auto error = [&](absl::string_view what) {
    return absl::ErrnoToStatus(errno, absl::StrCat(temp_path, ": ", what));
  };
  // mkstemp creates 0600; models, plans and checkpoints are ordinary files.
  if (fchmod(fd, 0644) != 0) return error("chmod failed");
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return error("write failed");
    }
    written += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return error("fsync failed");
  const int closed = close(fd);
  fd = -1;
  if (closed != 0) return error("close failed");
  if (rename(temp_path.c_str(), path.c_str()) != 0) {
    return absl::ErrnoToStatus(errno,
                               absl::StrCat(path, ": cannot rename ", temp_path, " over it"));
  }
  std::move(remove_temp).Cancel();
  // Make the rename itself durable. Best effort: the new file is complete either way.
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1));
  const int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    fsync(dir_fd);
    close(dir_fd);
  }
  return absl::OkStatus();
}

}  // namespace fleettune::engine
