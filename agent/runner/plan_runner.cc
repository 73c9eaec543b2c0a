#include "agent/runner/plan_runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/autodiff/autodiff.h"
#include "engine/base/status_macros.h"
#include "engine/compile/compiler.h"
#include "engine/io/safetensors.h"
#include "engine/ir/verifier.h"
#include "engine/passes/fuse.h"
#include "engine/passes/pipeline.h"
#include "engine/passes/rewrite.h"
#include "engine/plan/plan_io.h"
#include "engine/runtime/executable.h"

namespace fleettune::agent {
namespace {

using engine::DType;
using engine::Graph;
using engine::Node;
using engine::OpKind;
using engine::Tensor;
using engine::TensorView;
using engine::ValueId;
using engine::runtime::Executable;
using engine::runtime::ParameterStore;

constexpr int kMaxLossPoints = 256;

// The SGD settings of an update node, plain or with its gradient's GEMM fused
// in (fuse_updates); null for other nodes.
const engine::SgdAttrs* SgdOf(const Node& n) {
  if (n.op == OpKind::kSgdUpdate) return std::get_if<engine::SgdAttrs>(&n.attrs);
  if (n.op == OpKind::kSgdMatMulUpdate) {
    const auto* fused = std::get_if<engine::FusedSgdAttrs>(&n.attrs);
    return fused == nullptr ? nullptr : &fused->sgd;
  }
  return nullptr;
}
constexpr int kTimedSteps = 16;
// Checkpoint tensors that are not parameters.
constexpr char kStepsKey[] = "fleettune.steps_done";
constexpr char kFiguresKey[] = "fleettune.figures";  // accuracy before, speedup, saving, fits
constexpr char kCurveKey[] = "fleettune.loss_curve";

// The plan's graph and the values the runner drives.
struct PlanGraph {
  Graph train;
  v1::PlanMetadata metadata;  // runtime features the plan was compiled for
  ValueId input = engine::kNoValue, labels = engine::kNoValue;
  ValueId logits = engine::kNoValue, loss = engine::kNoValue;
  int64_t batch = 0, features = 0, classes = 0;
};

absl::StatusOr<PlanGraph> Understand(const std::string& plan_bytes) {
  ASSIGN_OR_RETURN(v1::CompiledPlan plan, engine::plan::ParsePlan(plan_bytes));
  PlanGraph p;
  ASSIGN_OR_RETURN(p.train, engine::plan::GraphFromProto(plan.graph()));
  p.metadata = plan.metadata();
  const Graph& g = p.train;
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    const Node& n = g.node(id);
    if (n.op == OpKind::kInput && n.name == "x") p.input = id;
    if (n.op == OpKind::kInput && n.name == "labels") p.labels = id;
    if (n.op == OpKind::kSoftmaxCrossEntropy) {
      if (p.loss != engine::kNoValue) {
        return absl::InvalidArgumentError("plan has more than one loss");
      }
      p.loss = id;
      p.logits = n.inputs[0];
    }
  }
  if (p.input == engine::kNoValue || p.labels == engine::kNoValue || p.loss == engine::kNoValue) {
    return absl::InvalidArgumentError(
        "plan lacks the inputs 'x' and 'labels' or a softmax cross-entropy loss");
  }
  const engine::Shape& xs = g.type(p.input).shape;
  if (xs.size() != 2 || g.type(p.input).dtype != DType::kF32) {
    return absl::InvalidArgumentError("plan input 'x' must be f32 [batch, features]");
  }
  // A micro-batched plan's graph is one slice; its executables take the whole batch.
  p.batch = xs[0] * std::max(1, p.metadata.micro_batches());
  p.features = xs[1];
  p.classes = g.type(p.logits).shape.back();
  return p;
}

// Nodes 0..loss of the training graph: the forward pass and the loss.
absl::StatusOr<Graph> ForwardPrefix(const PlanGraph& p) {
  Graph g;
  for (ValueId id = 0; id <= p.loss; ++id) g.AddUncheckedNode(p.train.node(id));
  g.MarkOutput(p.logits);
  g.MarkOutput(p.loss);
  RETURN_IF_ERROR(engine::VerifyGraph(g));
  return g;
}

// Full fine-tuning of the same model with the plan's optimizer, optimized by
// the same passes as the plan: the fair baseline for speed and memory. The
// plan's forward may hold fused ops, which autodiff cannot differentiate, so
// they are split first.
absl::StatusOr<Graph> DenseGraph(const PlanGraph& p) {
  ASSIGN_OR_RETURN(Graph prefix, ForwardPrefix(p));
  // The plan's optimizer state (scheduled among the forward nodes by the
  // compiler) is not the dense plan's: drop it, the dense updates add theirs.
  std::vector<ValueId> order;
  for (ValueId id = 0; id < prefix.num_nodes(); ++id) {
    const auto* a = std::get_if<engine::ParameterAttrs>(&prefix.node(id).attrs);
    if (a != nullptr && a->role == engine::ParamRole::kOptimizerState) continue;
    order.push_back(id);
  }
  std::vector<ValueId> kept, unfused;
  ASSIGN_OR_RETURN(Graph g, engine::passes::RebuildGraph(prefix, order, &kept));
  ASSIGN_OR_RETURN(bool changed, engine::passes::UnfuseActivations(g, &unfused));
  const ValueId loss = changed ? unfused[kept[p.loss]] : kept[p.loss];
  std::vector<ValueId> weights;
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    const Node& n = g.node(id);
    const auto* a = std::get_if<engine::ParameterAttrs>(&n.attrs);
    if (n.op == OpKind::kParameter && a != nullptr && a->role == engine::ParamRole::kWeight) {
      weights.push_back(id);
    }
  }
  engine::autodiff::OptimizerConfig optimizer;
  bool found = false;
  for (const Node& n : p.train.nodes()) {
    if (const engine::SgdAttrs* sgd = SgdOf(n)) {
      optimizer = engine::autodiff::OptimizerConfig::Sgd(*sgd);
      found = true;
    } else if (n.op == OpKind::kAdamWUpdate) {
      optimizer = engine::autodiff::OptimizerConfig::AdamW(std::get<engine::AdamWAttrs>(n.attrs));
      found = true;
    }
  }
  if (!found) return absl::InvalidArgumentError("plan has no optimizer update");
  ASSIGN_OR_RETURN(auto grads, engine::autodiff::BuildBackward(g, loss, weights));
  RETURN_IF_ERROR(engine::autodiff::AddOptimizerUpdates(g, grads, optimizer));
  engine::passes::PassOptions passes;
  passes.measure_memory = false;
  RETURN_IF_ERROR(engine::passes::RunPasses(g, passes).status());
  return g;
}

// What a step of `g` keeps in memory: arena, scratch, folded constants,
// weights and optimizer state (the engine's own figure, before allocating).
absl::StatusOr<size_t> TotalBytes(const Graph& g, const engine::runtime::CompileOptions& options) {
  ASSIGN_OR_RETURN(engine::runtime::MemoryStats m, engine::runtime::EstimateMemory(g, options));
  return m.total_bytes();
}

// PyTorch's nn.Linear initialization for every weight parameter of the plan,
// when the job shipped no base weights.
absl::Status InitializeWeights(const Graph& g, uint64_t seed, ParameterStore* params) {
  std::mt19937_64 rng(seed);
  std::map<std::string, int64_t> fan_in;
  for (const Node& n : g.nodes()) {
    if (n.op == OpKind::kParameter && absl::EndsWith(n.name, ".weight") &&
        n.type.shape.size() == 2) {
      fan_in[n.name.substr(0, n.name.size() - 7)] = n.type.shape[1];
    }
  }
  for (const Node& n : g.nodes()) {
    const auto* a = std::get_if<engine::ParameterAttrs>(&n.attrs);
    if (n.op != OpKind::kParameter || a == nullptr || a->role != engine::ParamRole::kWeight) {
      continue;
    }
    const size_t dot = n.name.rfind('.');
    auto it = fan_in.find(n.name.substr(0, dot));
    if (it == fan_in.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("no base weights given and no initializer for '", n.name, "'"));
    }
    const float bound = 1.0f / std::sqrt(static_cast<float>(it->second));
    std::uniform_real_distribution<float> dist(-bound, bound);
    Tensor t(n.type.dtype, n.type.shape);
    for (float& v : t.f32_span()) v = dist(rng);
    RETURN_IF_ERROR(params->Set(n.name, t));
  }
  return absl::OkStatus();
}

// Copies rows `order[first .. first+batch)` of the data into the executable's inputs.
void LoadBatch(const LabeledData& data, const std::vector<int64_t>& order, int64_t first,
               int64_t batch, int64_t features, const TensorView& x, const TensorView& y) {
  for (int64_t r = 0; r < batch; ++r) {
    const int64_t i = order[first + r];
    std::memcpy(x.f32() + r * features, data.images.f32() + i * features, features * sizeof(float));
    y.i32()[r] = data.labels.i32()[i];
  }
}

absl::StatusOr<double> Accuracy(Executable& eval, const PlanGraph& p, const LabeledData& data) {
  const int64_t n = data.labels.num_elements();
  if (n == 0) return 0.0;
  ASSIGN_OR_RETURN(TensorView x, eval.Input("x"));
  ASSIGN_OR_RETURN(TensorView y, eval.Input("labels"));
  ASSIGN_OR_RETURN(TensorView logits, eval.Output(p.logits));
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += p.batch) {
    const int64_t rows = std::min(p.batch, n - start);
    std::memcpy(x.f32(), data.images.f32() + start * p.features, rows * p.features * sizeof(float));
    std::memcpy(y.i32(), data.labels.i32() + start, rows * sizeof(int32_t));
    for (int64_t r = rows; r < p.batch; ++r) y.i32()[r] = engine::CrossEntropyAttrs{}.ignore_index;
    RETURN_IF_ERROR(eval.Run());
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = logits.f32() + r * p.classes;
      correct += (std::max_element(row, row + p.classes) - row) == data.labels.i32()[start + r];
    }
  }
  return static_cast<double>(correct) / static_cast<double>(n);
}

// Median milliseconds of `steps` runs of `exe` on the batch already loaded.
absl::StatusOr<double> TimeSteps(Executable& exe, int steps) {
  RETURN_IF_ERROR(exe.Run());  // warm-up
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(exe.Run());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed * 1000003u + static_cast<uint64_t>(epoch));
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

}  // namespace

std::string PersonalizedWeightsPath(const std::string& state_dir, const std::string& job_id) {
  return absl::StrCat(state_dir, "/personalized/", job_id, ".safetensors");
}

absl::StatusOr<v1::MetricsReport> RunPlan(const PlanRunInputs& in, const ReportFn& report,
                                          const std::atomic<bool>* cancelled) {
  const v1::Assignment& a = in.assignment;
  const SplitData& data = *in.data;
  ASSIGN_OR_RETURN(PlanGraph p, Understand(in.plan_bytes));
  if (data.train.images.num_elements() / std::max<int64_t>(1, data.train.images.shape()[0]) !=
      p.features) {
    return absl::InvalidArgumentError(
        absl::StrCat("local data has ", engine::ShapeToString(data.train.images.shape()),
                     " samples but the plan expects ", p.features, " features per sample"));
  }
  if (data.num_classes > p.classes) {
    return absl::InvalidArgumentError(
        absl::StrCat("local data has ", data.num_classes, " classes, the model ", p.classes));
  }
  const int64_t n_train = data.train.labels.num_elements();
  if (n_train < p.batch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "local data has ", n_train, " training samples, fewer than a batch of ", p.batch));
  }

  // Weights and budget.
  ParameterStore params;
  if (!in.base_weights.empty()) {
    ASSIGN_OR_RETURN(auto tensors, engine::io::ParseSafetensors(in.base_weights));
    for (auto& [name, t] : tensors) RETURN_IF_ERROR(params.Set(name, t));
  } else {
    RETURN_IF_ERROR(InitializeWeights(p.train, a.hyper_parameters().seed(), &params));
  }
  engine::runtime::CompileOptions options = engine::compile::RuntimeOptionsFor(p.metadata);
  options.threads = in.threads;
  ASSIGN_OR_RETURN(const size_t plan_total, TotalBytes(p.train, options));
  if (a.memory_budget_bytes() > 0 && plan_total > a.memory_budget_bytes()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "plan needs ", plan_total, " bytes, over the budget of ", a.memory_budget_bytes()));
  }
  ASSIGN_OR_RETURN(auto train, Executable::Compile(p.train, &params, options));
  ASSIGN_OR_RETURN(Graph forward, ForwardPrefix(p));
  ASSIGN_OR_RETURN(auto eval, Executable::Compile(forward, &params, options));
  const size_t peak = train->memory().total_bytes();

  // Resume from a checkpoint of this assignment, if any.
  std::filesystem::create_directories(in.state_dir + "/checkpoints");
  std::filesystem::create_directories(in.state_dir + "/personalized");
  const std::string checkpoint =
      absl::StrCat(in.state_dir, "/checkpoints/", a.assignment_id(), ".safetensors");
  int64_t steps_done = 0;
  double accuracy_before = 0, speedup = 0, saving = 0;
  bool dense_fits = false;
  std::vector<std::pair<int64_t, float>> curve;
  if (std::filesystem::exists(checkpoint)) {
    ASSIGN_OR_RETURN(auto saved, engine::io::ReadSafetensors(checkpoint));
    for (auto& [name, t] : saved) {
      if (absl::StartsWith(name, "fleettune.")) continue;
      RETURN_IF_ERROR(params.Set(name, t));
    }
    const Tensor& steps = saved.at(kStepsKey);
    const Tensor& figures = saved.at(kFiguresKey);
    steps_done = steps.i32()[0];
    accuracy_before = figures.f32()[0];
    speedup = figures.f32()[1];
    saving = figures.f32()[2];
    dense_fits = figures.f32()[3] != 0;
    const Tensor& c = saved.at(kCurveKey);
    for (int64_t i = 0; i + 1 < c.num_elements(); i += 2) {
      curve.emplace_back(static_cast<int64_t>(c.f32()[i]), c.f32()[i + 1]);
    }
    train->set_steps_run(steps_done);
  } else {
    ASSIGN_OR_RETURN(accuracy_before, Accuracy(*eval, p, data.holdout));
    // Dense vs this plan, on copies of the weights.
    ASSIGN_OR_RETURN(Graph dense, DenseGraph(p));
    ASSIGN_OR_RETURN(const size_t dense_total, TotalBytes(dense, options));
    saving = static_cast<double>(dense_total) / static_cast<double>(plan_total);
    dense_fits = a.memory_budget_bytes() == 0 || dense_total <= a.memory_budget_bytes();
    // A plan that updates every element of every weight is the dense plan: nothing to compare.
    // (An update with `rows` set trains only some output channels: a sparse plan.)
    int updates = 0, weights = 0;
    for (const Node& n : p.train.nodes()) {
      if (const engine::SgdAttrs* sgd = SgdOf(n)) {
        updates += sgd->rows == 0;
      } else if (const auto* adamw = std::get_if<engine::AdamWAttrs>(&n.attrs);
                 n.op == OpKind::kAdamWUpdate && adamw != nullptr) {
        updates += adamw->rows == 0;
      }
      const auto* pa = std::get_if<engine::ParameterAttrs>(&n.attrs);
      weights +=
          n.op == OpKind::kParameter && pa != nullptr && pa->role == engine::ParamRole::kWeight;
    }
    if (updates == weights) {
      speedup = 1.0;
    } else if (dense_fits) {
      // The dense plan starts from the same weights, with optimizer state of its own (the
      // plan's may hold only some rows of each weight).
      ParameterStore dense_params, plan_params = params;
      for (ValueId id = 0; id < p.train.num_nodes(); ++id) {
        const Node& n = p.train.node(id);
        const auto* pa = std::get_if<engine::ParameterAttrs>(&n.attrs);
        if (n.op != OpKind::kParameter || pa == nullptr ||
            pa->role == engine::ParamRole::kOptimizerState) {
          continue;
        }
        if (const Tensor* t = params.Find(n.name); t != nullptr) {
          RETURN_IF_ERROR(dense_params.Set(n.name, *t));
        }
      }
      ASSIGN_OR_RETURN(auto dense_exe, Executable::Compile(dense, &dense_params, options));
      ASSIGN_OR_RETURN(auto plan_exe, Executable::Compile(p.train, &plan_params, options));
      std::vector<int64_t> order = EpochOrder(n_train, 1, 0);
      for (Executable* e : {dense_exe.get(), plan_exe.get()}) {
        ASSIGN_OR_RETURN(TensorView x, e->Input("x"));
        ASSIGN_OR_RETURN(TensorView y, e->Input("labels"));
        LoadBatch(data.train, order, 0, p.batch, p.features, x, y);
      }
      ASSIGN_OR_RETURN(double dense_ms, TimeSteps(*dense_exe, kTimedSteps));
      ASSIGN_OR_RETURN(double plan_ms, TimeSteps(*plan_exe, kTimedSteps));
      speedup = plan_ms > 0 ? dense_ms / plan_ms : 0;
    }
  }

  const int64_t steps_per_epoch = n_train / p.batch;
  const int64_t epochs = std::max(1, a.hyper_parameters().epochs());
  const int64_t total = steps_per_epoch * epochs;
  const int64_t every = std::max(1, in.checkpoint_every_steps);
  const int64_t sample_every = std::max<int64_t>(1, total / 200);
  ASSIGN_OR_RETURN(TensorView x, train->Input("x"));
  ASSIGN_OR_RETURN(TensorView y, train->Input("labels"));
  ASSIGN_OR_RETURN(TensorView loss, train->Output(p.loss));

  auto make_report = [&](double accuracy_after, int64_t sequence, double ms) {
    v1::MetricsReport r;
    r.set_assignment_id(a.assignment_id());
    r.set_sequence(sequence);
    r.set_steps_done(steps_done);
    r.set_steps_total(total);
    // At most kMaxLossPoints, evenly thinned.
    const size_t stride = (curve.size() + kMaxLossPoints - 1) / kMaxLossPoints;
    for (size_t i = 0; i < curve.size(); i += std::max<size_t>(1, stride)) {
      auto* point = r.add_loss_curve();
      point->set_step(curve[i].first);
      point->set_loss(curve[i].second);
    }
    r.set_ms_per_step(ms);
    r.set_peak_memory_bytes(static_cast<int64_t>(peak));
    r.set_accuracy_before(accuracy_before);
    r.set_accuracy_after(accuracy_after);
    r.set_speedup_vs_dense(speedup);
    r.set_memory_saving_vs_dense(saving);
    r.set_dense_fits(dense_fits);
    return r;
  };
  auto save_checkpoint = [&]() -> absl::Status {
    std::map<std::string, Tensor> out = params.tensors();
    ASSIGN_OR_RETURN(out[kStepsKey], Tensor::FromI32({1}, {static_cast<int32_t>(steps_done)}));
    ASSIGN_OR_RETURN(
        out[kFiguresKey],
        Tensor::FromF32({4}, {static_cast<float>(accuracy_before), static_cast<float>(speedup),
                              static_cast<float>(saving), dense_fits ? 1.0f : 0.0f}));
    std::vector<float> flat;
    for (const auto& [s, l] : curve) {
      flat.push_back(static_cast<float>(s));
      flat.push_back(l);
    }
    ASSIGN_OR_RETURN(out[kCurveKey], Tensor::FromF32({static_cast<int64_t>(flat.size())}, flat));
    return engine::io::WriteSafetensors(checkpoint, out);
  };

  double seconds = 0;
  int64_t timed = 0;
  std::vector<int64_t> order;
  int64_t order_epoch = -1;
  while (steps_done < total) {
    if (cancelled != nullptr && cancelled->load()) {
      return absl::CancelledError("assignment cancelled");
    }
    const int64_t epoch = steps_done / steps_per_epoch;
    if (epoch != order_epoch) {
      order = EpochOrder(n_train, a.hyper_parameters().seed(), epoch);
      order_epoch = epoch;
    }
    LoadBatch(data.train, order, (steps_done % steps_per_epoch) * p.batch, p.batch, p.features, x,
              y);
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(train->Run());
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ++timed;
    ++steps_done;
    if (steps_done % sample_every == 0) curve.emplace_back(steps_done, loss.f32()[0]);
    if (steps_done % every == 0 && steps_done < total) {
      RETURN_IF_ERROR(save_checkpoint());
      if (report) report(make_report(0.0, steps_done + 1, 1e3 * seconds / timed));
    }
  }
  ASSIGN_OR_RETURN(double accuracy_after, Accuracy(*eval, p, data.holdout));
  std::map<std::string, Tensor> personalized;
  for (const Node& n : p.train.nodes()) {
    const auto* attrs = std::get_if<engine::ParameterAttrs>(&n.attrs);
    if (n.op == OpKind::kParameter && attrs != nullptr &&
        attrs->role == engine::ParamRole::kWeight) {
      personalized[n.name] = *params.Find(n.name);
    }
  }
  RETURN_IF_ERROR(engine::io::WriteSafetensors(PersonalizedWeightsPath(in.state_dir, a.job_id()),
                                               personalized));
  v1::MetricsReport final_report =
      make_report(accuracy_after, total + 2, timed > 0 ? 1e3 * seconds / timed : 0.0);
  std::filesystem::remove(checkpoint);
  return final_report;
}

}  // namespace fleettune::agent
