// The agent's local data sets: reads the files a fleettune.v1.LocalDataset
// (agent_config.proto) names, keeps the device's shard and splits it into
// train and holdout samples. Samples never leave the device.
//
//   v1::LocalDataset config;  // from the agent's config file
//   config.set_name("opencv-digits");
//   config.set_format("opencv-digits-png");
//   config.set_path("/var/lib/fleettune-agent/data/digits.png");
//   ASSIGN_OR_RETURN(SplitData data, LoadLocalDataset(config));
//   // data.train.images: f32 [4000, 784]; data.holdout.labels: i32 [1000]
//
// Formats and the split are described in readers.h (LabeledData, SplitData
// and the readers live there, free of protobuf, for engine tools).
//
// Thread-safety: shares no state; call from any thread.
#ifndef FLEETTUNE_AGENT_DATA_LOCAL_DATASET_H_
#define FLEETTUNE_AGENT_DATA_LOCAL_DATASET_H_

#include "absl/status/statusor.h"
#include "agent/data/readers.h"
#include "proto/fleettune/v1/agent_config.pb.h"

namespace fleettune::agent {

// LoadLocalDataset()
//
// Reads config.path in config.format ("mnist-json", "opencv-digits-png" or
// "idx"), keeps sample i when shard_count is 0 or i % shard_count ==
// shard_index, shuffles deterministically (seeded from config.name) and holds
// out holdout_fraction of the samples (0 = 0.2).
// Errors: InvalidArgument for an unknown format, a task other than
// "classification" (or empty), invalid shard or fraction (checked before any
// file is read) and malformed files; NotFound for a missing file or
// directory; DataLoss for truncated or corrupt compressed data. Messages name
// the data set and the path.
absl::StatusOr<SplitData> LoadLocalDataset(const v1::LocalDataset& config);

}  // namespace fleettune::agent

#endif  // FLEETTUNE_AGENT_DATA_LOCAL_DATASET_H_
