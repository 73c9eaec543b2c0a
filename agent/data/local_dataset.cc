#include "agent/data/local_dataset.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fleettune::agent {
namespace {

absl::Status Prefixed(const absl::Status& status, const v1::LocalDataset& config) {
  return absl::Status(status.code(),
                      absl::StrCat("dataset '", config.name(), "': ", status.message()));
}

}  // namespace

absl::StatusOr<SplitData> LoadLocalDataset(const v1::LocalDataset& config) {
  SplitOptions options;
  options.name = config.name();
  options.shard_index = config.shard_index();
  options.shard_count = config.shard_count();
  options.holdout_fraction = config.holdout_fraction();
  if (!config.task().empty() && config.task() != "classification") {
    return Prefixed(absl::InvalidArgumentError(
                        absl::StrCat("unknown task '", config.task(), "' (want classification)")),
                    config);
  }
  // Configuration errors first: a typo should not cost a read of the whole data set.
  if (absl::Status s = ValidateSplitOptions(options); !s.ok()) return Prefixed(s, config);
  absl::StatusOr<LabeledData> all = ReadDataset(config.format(), config.path());
  if (!all.ok()) return Prefixed(all.status(), config);
  absl::StatusOr<SplitData> split = ShardAndSplit(*all, options);
  if (!split.ok()) return Prefixed(split.status(), config);
  return split;
}

}  // namespace fleettune::agent
