// Prometheus metrics of the coordinator (prometheus-cpp), scraped at /metrics.
//
//   fleettune_agents_online{device_class}
//   fleettune_jobs{state}
//   fleettune_plan_compile_seconds{device_class}            histogram
//   fleettune_rpcs_total{service, method, code}
//   fleettune_job_step_milliseconds{job, device_class}      mean over completed devices
//   fleettune_job_speedup_vs_dense{job, device_class}
//   fleettune_job_memory_saving_vs_dense{job, device_class}
//   fleettune_job_peak_memory_bytes{job, device_class}
//   fleettune_job_memory_budget_bytes{job, device_class}
//   fleettune_job_accuracy{job, device_class, when="before"|"after"}
//   fleettune_job_devices{job, device_class, state}
//
// Thread-safe.
#ifndef FLEETTUNE_SERVER_GRPC_METRICS_H_
#define FLEETTUNE_SERVER_GRPC_METRICS_H_

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/coordinator/coordinator.h"

namespace fleettune::server {

class CoordinatorMetrics {
 public:
  CoordinatorMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void RecordRpc(const char* service, const char* method, grpc::StatusCode code);
  void ObserveCompile(const std::string& device_class, absl::Duration duration);
  // Re-reads fleet and job figures from the coordinator.
  void Refresh(const Coordinator& coordinator);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  absl::Mutex mu_;  // serializes Refresh
  prometheus::Family<prometheus::Gauge>& agents_online_;
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Family<prometheus::Histogram>& compile_seconds_;
  prometheus::Family<prometheus::Counter>& rpcs_;
  prometheus::Family<prometheus::Gauge>& step_ms_;
  prometheus::Family<prometheus::Gauge>& speedup_;
  prometheus::Family<prometheus::Gauge>& memory_saving_;
  prometheus::Family<prometheus::Gauge>& peak_memory_;
  prometheus::Family<prometheus::Gauge>& budget_;
  prometheus::Family<prometheus::Gauge>& accuracy_;
  prometheus::Family<prometheus::Gauge>& devices_;
};

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_GRPC_METRICS_H_
