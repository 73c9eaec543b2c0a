#include "server/grpc/metrics.h"

#include <prometheus/counter.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace fleettune::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

std::string StateLabel(const std::string& enum_name, const std::string& prefix) {
  return absl::AsciiStrToLower(enum_name.substr(prefix.size()));
}

}  // namespace

CoordinatorMetrics::CoordinatorMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      agents_online_(BuildGauge()
                         .Name("fleettune_agents_online")
                         .Help("Devices heartbeating within their lease, per class")
                         .Register(*registry_)),
      jobs_(BuildGauge().Name("fleettune_jobs").Help("Jobs by state").Register(*registry_)),
      compile_seconds_(BuildHistogram()
                           .Name("fleettune_plan_compile_seconds")
                           .Help("Time to compile one per-class training plan")
                           .Register(*registry_)),
      rpcs_(BuildCounter()
                .Name("fleettune_rpcs_total")
                .Help("RPCs handled, by service, method and status code")
                .Register(*registry_)),
      step_ms_(BuildGauge()
                   .Name("fleettune_job_step_milliseconds")
                   .Help("Mean training step time reported by completed devices")
                   .Register(*registry_)),
      speedup_(BuildGauge()
                   .Name("fleettune_job_speedup_vs_dense")
                   .Help("Mean step-time speedup of the job's plan over the dense plan")
                   .Register(*registry_)),
      memory_saving_(BuildGauge()
                         .Name("fleettune_job_memory_saving_vs_dense")
                         .Help("Mean memory saving (dense / plan) reported by devices")
                         .Register(*registry_)),
      peak_memory_(BuildGauge()
                       .Name("fleettune_job_peak_memory_bytes")
                       .Help("Largest peak training memory reported by a device")
                       .Register(*registry_)),
      budget_(BuildGauge()
                  .Name("fleettune_job_memory_budget_bytes")
                  .Help("The device class's training memory budget for the job's plan")
                  .Register(*registry_)),
      accuracy_(BuildGauge()
                    .Name("fleettune_job_accuracy")
                    .Help("Mean local hold-out accuracy before and after fine-tuning")
                    .Register(*registry_)),
      devices_(BuildGauge()
                   .Name("fleettune_job_devices")
                   .Help("Devices of a job by assignment state")
                   .Register(*registry_)) {}

void CoordinatorMetrics::RecordRpc(const char* service, const char* method, grpc::StatusCode code) {
  rpcs_
      .Add({{"service", service},
            {"method", method},
            {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}})
      .Increment();
}

void CoordinatorMetrics::ObserveCompile(const std::string& device_class, absl::Duration duration) {
  compile_seconds_
      .Add({{"device_class", device_class}},
           prometheus::Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30})
      .Observe(absl::ToDoubleSeconds(duration));
}

void CoordinatorMetrics::Refresh(const Coordinator& coordinator) {
  absl::MutexLock lock(&mu_);
  const FleetCounts counts = coordinator.Counts();
  for (const auto& [cls, n] : counts.online_by_class) {
    agents_online_.Add({{"device_class", cls}}).Set(n);
  }
  for (const auto& [state, n] : counts.jobs_by_state) {
    jobs_.Add({{"state", StateLabel(v1::JobState_Name(state), "JOB_STATE_")}}).Set(n);
  }
  for (const v1::Job& job : coordinator.AllJobs()) {
    for (const v1::ClassProgress& p : job.progress()) {
      const std::map<std::string, std::string> labels = {{"job", job.job_id()},
                                                         {"device_class", p.device_class()}};
      step_ms_.Add(labels).Set(p.ms_per_step());
      speedup_.Add(labels).Set(p.speedup_vs_dense());
      memory_saving_.Add(labels).Set(p.memory_saving_vs_dense());
      peak_memory_.Add(labels).Set(static_cast<double>(p.peak_memory_bytes()));
      budget_.Add(labels).Set(static_cast<double>(p.plan().budget_bytes()));
      auto with = [&](const char* key, const char* value) {
        auto l = labels;
        l[key] = value;
        return l;
      };
      accuracy_.Add(with("when", "before")).Set(p.accuracy_before());
      accuracy_.Add(with("when", "after")).Set(p.accuracy_after());
      devices_.Add(with("state", "assigned")).Set(p.assigned());
      devices_.Add(with("state", "running")).Set(p.running());
      devices_.Add(with("state", "completed")).Set(p.completed());
      devices_.Add(with("state", "failed")).Set(p.failed());
      devices_.Add(with("state", "lost")).Set(p.lost());
    }
  }
}

}  // namespace fleettune::server
