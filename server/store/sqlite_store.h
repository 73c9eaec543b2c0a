// The default Store backend: one embedded SQLite database file.
//
// Why SQLite: a coordinator for a fleet of edge devices usually runs on one
// small machine. SQLite is a library, not a server, so there is nothing extra
// to install, run, secure or monitor; it is transactional (each WriteBatch is
// one ACID transaction), and in WAL mode readers never block the writer and a
// crash mid-write leaves the previous committed state intact. Its one limit,
// a single writer per file, is far above what one coordinator writes. A
// coordinator that outgrows one machine can move to a server database behind
// the same Store interface.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Store> store,
//                    OpenSqliteStore("/var/lib/fleettune/coordinator.db"));
//   ASSIGN_OR_RETURN(StoreSnapshot state, store->LoadAll());
//
// Durability: Write() returns only after its transaction is on disk
// (synchronous=FULL), so what the coordinator acknowledged survives a power
// cut, not just a process crash. The database uses WAL journaling: keep the
// `-wal` and `-shm` files beside it, and back it up with `sqlite3 FILE
// ".backup COPY"` rather than by copying the file while the coordinator runs.
//
// Thread safety: the store is thread-safe. It holds one connection, guarded
// by a mutex, so calls are serialized; other processes (such as the sqlite3
// shell) may read the file concurrently, and a writer among them makes calls
// wait up to a busy timeout (5 s) and then fail with Unavailable.
#ifndef FLEETTUNE_SERVER_STORE_SQLITE_STORE_H_
#define FLEETTUNE_SERVER_STORE_SQLITE_STORE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/store/store.h"

namespace fleettune::server {

// Opens (creating if missing) the database at `path`, or a private in-memory
// database for ":memory:" (tests), and brings its schema up to date: the
// schema version lives in `PRAGMA user_version`, and every migration the file
// lacks is applied in one transaction, so an interrupted upgrade leaves the old
// schema intact.
//
// Errors name the path:
//  - FailedPrecondition when the database's schema version is newer than this
//    build knows (a downgrade), or when a migration cannot be applied;
//  - DataLoss when the file is not a SQLite database or is corrupt;
//  - FailedPrecondition / PermissionDenied / Unavailable when the file cannot
//    be opened, is read-only, or is locked by another process past the busy
//    timeout.
absl::StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path);

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_STORE_SQLITE_STORE_H_
