#include "engine/runtime/executable.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <functional>
#include <new>

#include "engine/base/status_matchers.h"
#include "engine/kernels/isa.h"
#include "engine/models/mlp.h"
#include "engine/ops/op_registry.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

// Counts heap allocations while `g_counting` is set, to prove the step loop
// allocates nothing.
namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  if (g_counting.load(std::memory_order_relaxed)) ++g_allocations;
  void* p = std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
// Not inlined: GCC would otherwise see free() called on what `new` returned
// and warn (-Wmismatched-new-delete), not knowing that this `new` is malloc.
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace fleettune::engine::runtime {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

struct Fixture {
  models::MlpConfig config{{20, 16, 8, 4}, 8};
  models::Model model;
  Graph train_graph;
  ParameterStore params;
};

void Build(Fixture* f, autodiff::OptimizerConfig opt) {
  ASSERT_OK_AND_ASSIGN(f->model, models::BuildMlp(f->config));
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> all, train::SelectTrainable(f->model, "full"));
  ASSERT_OK_AND_ASSIGN(f->train_graph, train::BuildTrainingGraph(f->model, all, opt));
  ASSERT_OK(models::InitializeMlp(f->config, 1, &f->params));
}

TEST(Executable, StepLoopDoesNotAllocate) {
  for (auto opt : {autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 1e-4f}),
                   autodiff::OptimizerConfig::AdamW(AdamWAttrs{})}) {
    Fixture f;
    ASSERT_NO_FATAL_FAILURE(Build(&f, opt));
    ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(f.train_graph, &f.params));
    ASSERT_OK_AND_ASSIGN(TensorView labels, exe->Input("labels"));
    for (int i = 0; i < 8; ++i) labels.i32()[i] = i % 4;
    ASSERT_OK(exe->Run());  // warm up OpenBLAS's own buffers
    g_allocations = 0;
    g_counting = true;
    absl::Status status;  // gtest's assertion macros allocate: check after
    for (int i = 0; i < 20; ++i) status.Update(exe->Run());
    g_counting = false;
    ASSERT_OK(status);
    EXPECT_EQ(g_allocations.load(), 0);
    EXPECT_EQ(exe->steps_run(), 21);
  }
}

// A plan names its class's kernel ISA (engine/kernels/isa.h); the executable
// runs its kernels at that level, refuses a level this CPU lacks, and by
// default takes the widest the CPU has.
TEST(Executable, RunsTheKernelIsaItWasCompiledFor) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(Build(&f, autodiff::OptimizerConfig::Sgd({0.1f})));
  CompileOptions generic;
  generic.kernel_isa = "generic";
  ASSERT_OK_AND_ASSIGN(auto narrow, Executable::Compile(f.train_graph, &f.params, generic));
  ASSERT_OK_AND_ASSIGN(auto widest, Executable::Compile(f.train_graph, &f.params));
  ASSERT_OK(narrow->Run());
  EXPECT_EQ(kernels::KernelIsa(), kernels::Isa::kGeneric);
  ASSERT_OK(widest->Run());
  EXPECT_EQ(kernels::KernelIsa(), kernels::BestHostIsa());
  ASSERT_OK(narrow->Run());
  EXPECT_EQ(kernels::KernelIsa(), kernels::Isa::kGeneric);

  CompileOptions bad;
  bad.kernel_isa = "avx1024";
  EXPECT_THAT(Executable::Compile(f.train_graph, &f.params, bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("avx1024")));
  for (kernels::Isa isa : {kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    CompileOptions o;
    o.kernel_isa = std::string(kernels::IsaName(isa));
    auto exe = Executable::Compile(f.train_graph, &f.params, o);
    if (kernels::HostSupports(isa)) {
      EXPECT_OK(exe.status());
    } else {
      EXPECT_THAT(exe,
                  StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("does not support")));
    }
  }
}

// The profile's op table covers every op kind run; the node list names the
// slowest nodes with their types, as many as asked for.
TEST(Executable, ProfileReportListsOpsAndTheSlowestNodes) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(Build(&f, autodiff::OptimizerConfig::Sgd({0.1f})));
  CompileOptions profile;
  profile.profile = true;
  ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(f.train_graph, &f.params, profile));
  for (int i = 0; i < 3; ++i) ASSERT_OK(exe->Run());
  const std::string ops = exe->ProfileReport();
  EXPECT_THAT(ops, HasSubstr("linear"));
  EXPECT_THAT(ops, HasSubstr("sgd_update"));
  EXPECT_THAT(ops, ::testing::Not(HasSubstr("inputs -> output")));
  const std::string nodes = exe->ProfileReport(2);
  ASSERT_THAT(nodes, HasSubstr("inputs -> output"));
  const std::string list = nodes.substr(nodes.find("inputs -> output"));
  EXPECT_EQ(std::count(list.begin(), list.end(), '\n'), 3);  // header + 2 nodes
  EXPECT_THAT(list, HasSubstr(" -> f32["));
  // After a reset only the steps run since count, and none have run yet.
  exe->ResetProfile();
  EXPECT_THAT(exe->ProfileReport(), HasSubstr(" 0.000 "));
  EXPECT_THAT(exe->ProfileReport(), ::testing::Not(HasSubstr("100.0%")));
  CompileOptions quiet;
  ASSERT_OK_AND_ASSIGN(auto plain, Executable::Compile(f.train_graph, &f.params, quiet));
  EXPECT_EQ(plain->ProfileReport(5), "");
}

TEST(Executable, TrainingIsDeterministicForASeed) {
  Tensor results[2];
  for (int run = 0; run < 2; ++run) {
    Fixture f;
    ASSERT_NO_FATAL_FAILURE(Build(&f, autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 0.0f})));
    CompileOptions two_threads;
    two_threads.threads = 2;
    ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(f.train_graph, &f.params, two_threads));
    ASSERT_OK_AND_ASSIGN(TensorView x, exe->Input("x"));
    ASSERT_OK_AND_ASSIGN(TensorView labels, exe->Input("labels"));
    for (int i = 0; i < 8 * 20; ++i) x.f32()[i] = static_cast<float>((i * 37) % 11) / 11.0f;
    for (int i = 0; i < 8; ++i) labels.i32()[i] = i % 4;
    for (int i = 0; i < 10; ++i) ASSERT_OK(exe->Run());
    results[run] = *f.params.Find("fc1.weight");
  }
  for (int64_t i = 0; i < results[0].num_elements(); ++i) {
    ASSERT_EQ(results[0].f32()[i], results[1].f32()[i]) << i;
  }
}

TEST(Executable, ReportsArenaAndStateBytes) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(Build(&f, autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 0.0f})));
  ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(f.train_graph, &f.params));
  const size_t weights = (20 * 16 + 16 + 16 * 8 + 8 + 8 * 4 + 4) * 4;
  EXPECT_EQ(exe->memory().weight_bytes, weights);
  EXPECT_EQ(exe->memory().optimizer_state_bytes, weights);  // one momentum buffer each
  EXPECT_GT(exe->memory().arena_bytes, 0u);
  ASSERT_OK_AND_ASSIGN(ArenaLayout layout, PlanArena(f.train_graph));
  EXPECT_EQ(layout.plan.arena_bytes, exe->memory().arena_bytes);
}

// A reshape of a parameter no update writes reads the parameter's storage:
// no arena buffer and no copy. One whose parameter is updated in the step
// still copies it (a view would see the update).
TEST(Executable, ReshapesOfFrozenParametersAreViews) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 4}}));
  ASSERT_OK_AND_ASSIGN(ValueId frozen, g.AddParameter("frozen", {DType::kF32, {2, 2, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId trained, g.AddParameter("trained", {DType::kF32, {2, 2, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId grad, g.AddInput("grad", {DType::kF32, {2, 2, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId fr, g.AddNode(OpKind::kReshape, {frozen}, ShapeAttrs{{4, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId tr, g.AddNode(OpKind::kReshape, {trained}, ShapeAttrs{{4, 3}}));
  // The update runs between the trained reshape and its reader: the reader
  // must see the values from before the update.
  ASSERT_OK(g.AddNode(OpKind::kSgdUpdate, {trained, grad}, SgdAttrs{1.0f}).status());
  ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kMatMul, {x, fr}, MatMulAttrs{}));
  ASSERT_OK_AND_ASSIGN(ValueId z, g.AddNode(OpKind::kMatMul, {x, tr}, MatMulAttrs{}));
  g.MarkOutput(y);
  g.MarkOutput(z);
  ASSERT_OK_AND_ASSIGN(ArenaLayout layout, PlanArena(g));
  EXPECT_TRUE(layout.parameter_view[fr]);
  EXPECT_FALSE(layout.parameter_view[tr]);
  EXPECT_EQ(std::count(layout.values.begin(), layout.values.end(), fr), 0);
  EXPECT_EQ(std::count(layout.values.begin(), layout.values.end(), tr), 1);

  ParameterStore params;
  ASSERT_OK_AND_ASSIGN(Tensor w,
                       Tensor::FromF32({2, 2, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  ASSERT_OK(params.Set("frozen", w));
  ASSERT_OK(params.Set("trained", w));
  ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(g, &params));
  ASSERT_OK_AND_ASSIGN(Tensor xs, Tensor::FromF32({2, 4}, {1, 0, 0, 0, 0, 0, 0, 1}));
  ASSERT_OK(exe->SetInput("x", xs));
  ASSERT_OK_AND_ASSIGN(Tensor ones, Tensor::FromF32({2, 2, 3}, std::vector<float>(12, 1.0f)));
  ASSERT_OK(exe->SetInput("grad", ones));
  for (int step = 0; step < 2; ++step) {
    ASSERT_OK(exe->Run());
    // x picks rows 0 and 3 of the [4, 3] reshape; `trained` loses 1 a step.
    ASSERT_OK_AND_ASSIGN(TensorView vy, exe->Output(y));
    EXPECT_EQ(std::vector<float>(vy.f32(), vy.f32() + 6),
              (std::vector<float>{1, 2, 3, 10, 11, 12}));
    const float s = static_cast<float>(step);
    ASSERT_OK_AND_ASSIGN(TensorView vz, exe->Output(z));
    EXPECT_EQ(std::vector<float>(vz.f32(), vz.f32() + 6),
              (std::vector<float>{1 - s, 2 - s, 3 - s, 10 - s, 11 - s, 12 - s}));
  }
}

// A ReLU6 convolution's mask, computed by the convolution's fast kernel
// instead of its own node: the same bits as the reference kernels' separate
// pass, and the mask's buffer is live from the convolution on (not free for
// reuse while the convolution still reads its input). Planes of 16 elements
// are not whole mask words, so that mask keeps its node. The 1×1 one takes
// the direct pointwise kernel at AVX-512 (kernels/pointwise_conv.h), the
// stride-2 one (64² to 32²) the stem kernel (kernels/stem_conv.h).
TEST(Executable, ConvolutionsWriteTheirActivationMasks) {
  struct Case {
    int64_t side, kernel, stride;
  };
  for (const auto& [side, kernel, stride] :
       std::vector<Case>{{8, 3, 1}, {4, 3, 1}, {32, 1, 1}, {64, 3, 2}}) {
    SCOPED_TRACE(::testing::Message() << side << "² k" << kernel << " s" << stride);
    const Shape w_shape{5, 3, kernel, kernel};
    Graph g;
    ASSERT_OK_AND_ASSIGN(ValueId in, g.AddInput("x", {DType::kF32, {2, 3, side, side}}));
    ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, w_shape}));
    ASSERT_OK_AND_ASSIGN(ValueId b, g.AddParameter("b", {DType::kF32, {5}}));
    // x dies at the convolution.
    ASSERT_OK_AND_ASSIGN(ValueId x, g.AddNode(OpKind::kScale, {in}, ScalarAttrs{4.0f}));
    const int pad = static_cast<int>(kernel / 2), s = static_cast<int>(stride);
    Conv2dAttrs conv{s, s, pad, pad, 1, 1, 1};
    ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kConv2dActivation, {x, w, b},
                                              FusedConvAttrs{conv, FusedActivationFn::kRelu6}));
    ASSERT_OK_AND_ASSIGN(ValueId m, g.AddNode(OpKind::kActivationMask, {y}, ScalarAttrs{6.0f}));
    ASSERT_OK_AND_ASSIGN(ValueId dy, g.AddNode(OpKind::kScale, {y}, ScalarAttrs{-1.0f}));
    ASSERT_OK_AND_ASSIGN(ValueId dx, g.AddNode(OpKind::kMaskedGrad, {dy, m}));
    g.MarkOutput(y);
    g.MarkOutput(m);
    g.MarkOutput(dx);
    const std::vector<ValueId> absorbed = AbsorbedMasks(g);
    EXPECT_EQ(absorbed[m], side != 4 ? y : kNoValue);

    ArenaOptions options;
    options.written_by = absorbed;
    ASSERT_OK_AND_ASSIGN(ArenaLayout layout, PlanArena(g, options));
    const auto request = [&](ValueId v) {
      return layout.requests[std::find(layout.values.begin(), layout.values.end(), v) -
                             layout.values.begin()];
    };
    EXPECT_EQ(request(m).first_use, side != 4 ? y : m);

    for (bool reference : {true, false}) {
      SCOPED_TRACE(reference ? "reference kernels" : "fast kernels");
      ParameterStore params;
      std::vector<float> wv(5 * 3 * kernel * kernel), bv(5);
      for (size_t i = 0; i < wv.size(); ++i) wv[i] = 0.05f * static_cast<float>(i % 11) - 0.2f;
      for (size_t i = 0; i < bv.size(); ++i) bv[i] = 0.5f * static_cast<float>(i);
      ASSERT_OK_AND_ASSIGN(Tensor wt, Tensor::FromF32(w_shape, wv));
      ASSERT_OK_AND_ASSIGN(Tensor bt, Tensor::FromF32({5}, bv));
      ASSERT_OK(params.Set("w", wt));
      ASSERT_OK(params.Set("b", bt));
      CompileOptions compile;
      compile.use_reference_kernels = reference;
      compile.threads = 2;
      ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(g, &params, compile));
      std::vector<float> xv(2 * 3 * side * side);
      for (size_t i = 0; i < xv.size(); ++i) xv[i] = 0.1f * static_cast<float>(i % 23) - 1.0f;
      ASSERT_OK_AND_ASSIGN(Tensor xt, Tensor::FromF32({2, 3, side, side}, xv));
      ASSERT_OK(exe->SetInput("x", xt));
      ASSERT_OK(exe->Run());
      // What activation_mask and masked_grad make of the y this run computed.
      ASSERT_OK_AND_ASSIGN(TensorView yv, exe->Output(y));
      ASSERT_OK_AND_ASSIGN(TensorView mv, exe->Output(m));
      ASSERT_OK_AND_ASSIGN(TensorView dv, exe->Output(dx));
      int passing = 0;
      for (int64_t i = 0; i < yv.num_elements(); ++i) {
        const float v = yv.f32()[i];
        const bool bit = (static_cast<uint32_t>(mv.i32()[i / 32]) >> (i % 32)) & 1u;
        EXPECT_EQ(bit, v > 0.0f && v < 6.0f) << "element " << i;
        EXPECT_EQ(dv.f32()[i], bit ? -v : 0.0f) << "element " << i;
        passing += bit;
      }
      EXPECT_GT(passing, 0);
      EXPECT_LT(passing, yv.num_elements());
    }
  }
}

// A bias gradient (reduce_sum over N, H, W) of a convolution's input
// gradient, summed by the convolution's fast kernel as it writes dx: the bits
// reduce_sum's own fast kernel computes from that dx. Masked and unmasked,
// plain, grouped, depthwise and pointwise (60 channels of 24×24: the team
// splits a sample's planes, so not 8 planes to a thread; 20 of 32×32: the
// direct pointwise kernel at AVX-512, 12 planes to a block); 1×1 planes keep
// the reduce_sum node.
TEST(Executable, InputGradientsSumTheirChannels) {
  struct Case {
    int64_t channels, side, kernel, groups;
    bool masked;
  };
  for (const Case& c : {Case{4, 8, 3, 1, false}, Case{4, 8, 3, 4, true}, Case{4, 5, 3, 4, false},
                        Case{4, 1, 3, 1, true}, Case{60, 24, 1, 1, true}, Case{20, 32, 1, 1, true},
                        Case{20, 32, 1, 1, false}}) {
    SCOPED_TRACE(::testing::Message() << c.channels << "x" << c.side << "² k" << c.kernel << " g"
                                      << c.groups << (c.masked ? " masked" : ""));
    Graph g;
    const Shape x{3, c.channels, c.side, c.side};
    const Shape w_shape{c.channels, c.channels / c.groups, c.kernel, c.kernel};
    ASSERT_OK_AND_ASSIGN(ValueId dy, g.AddInput("dy", {DType::kF32, x}));
    ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, w_shape}));
    std::vector<ValueId> operands = {dy, w};
    const int64_t words = (3 * c.channels * c.side * c.side + 31) / 32;
    if (c.masked) {
      ASSERT_OK_AND_ASSIGN(ValueId m, g.AddInput("m", {DType::kI32, {words}}));
      operands.push_back(m);
    }
    const int pad = static_cast<int>(c.kernel / 2);
    ASSERT_OK_AND_ASSIGN(
        ValueId dx,
        g.AddNode(
            OpKind::kConv2dBackwardInput, operands,
            Conv2dGradAttrs{Conv2dAttrs{1, 1, pad, pad, 1, 1, static_cast<int>(c.groups)}, x}));
    ASSERT_OK_AND_ASSIGN(ValueId db, g.AddNode(OpKind::kReduceSum, {dx}, ReduceAttrs{{0, 2, 3}}));
    g.MarkOutput(dx);
    g.MarkOutput(db);
    EXPECT_EQ(AbsorbedChannelSums(g)[db], c.side > 1 ? dx : kNoValue);

    ParameterStore params;
    std::vector<float> wv(c.channels * (c.channels / c.groups) * c.kernel * c.kernel);
    for (size_t i = 0; i < wv.size(); ++i) wv[i] = 0.07f * static_cast<float>(i % 13) - 0.4f;
    ASSERT_OK_AND_ASSIGN(Tensor wt, Tensor::FromF32(w_shape, wv));
    ASSERT_OK(params.Set("w", wt));
    CompileOptions options;
    options.threads = 2;  // the team splits each sample's planes
    ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(g, &params, options));
    ASSERT_OK_AND_ASSIGN(TensorView dyv, exe->Input("dy"));
    for (int64_t i = 0; i < dyv.num_elements(); ++i) {
      dyv.f32()[i] = 0.013f * static_cast<float>(i % 97) - 0.6f;
    }
    if (c.masked) {
      ASSERT_OK_AND_ASSIGN(TensorView mv, exe->Input("m"));
      for (int64_t i = 0; i < words; ++i) mv.i32()[i] = static_cast<int32_t>(0x5a3c96e1u * (i + 1));
    }
    ASSERT_OK(exe->Run());
    ASSERT_OK_AND_ASSIGN(TensorView dxv, exe->Output(dx));
    ASSERT_OK_AND_ASSIGN(TensorView dbv, exe->Output(db));
    // reduce_sum's fast kernel over the dx this run wrote.
    Node sum;
    sum.op = OpKind::kReduceSum;
    sum.attrs = ReduceAttrs{{0, 2, 3}};
    const TensorType dx_type{DType::kF32, x};
    const TensorType* types[] = {&dx_type};
    const ops::OpDef& def = ops::GetOpDef(OpKind::kReduceSum);
    std::vector<float> scratch(def.scratch_bytes(sum, absl::MakeConstSpan(types)) / sizeof(float) +
                               1);
    std::vector<float> want(c.channels);
    const Shape want_shape{c.channels};
    ops::StepInfo step;
    ops::KernelArgs args{&sum, &dxv, 1, {want.data(), &want_shape}, &step};
    args.scratch = scratch.data();
    def.fast(args);
    EXPECT_EQ(std::vector<float>(dbv.f32(), dbv.f32() + c.channels), want);
  }
}

// Fills every f32 input of `exe` with a deterministic pattern, and every i32
// one (masks) with random-looking bits.
void FillInputs(const Graph& g, Executable* exe) {
  for (const Node& node : g.nodes()) {
    if (node.op != OpKind::kInput) continue;
    absl::StatusOr<TensorView> v = exe->Input(node.name);
    ASSERT_TRUE(v.ok());
    for (int64_t i = 0; i < v->num_elements(); ++i) {
      if (node.type.dtype == DType::kI32) {
        v->i32()[i] = static_cast<int32_t>(0x5a3c96e1u * static_cast<uint32_t>(i + 1));
      } else {
        v->f32()[i] = 0.011f * static_cast<float>(i % 89) - 0.45f;
      }
    }
  }
}

// Parameters named "w…" and "b…" of `g`, deterministic.
ParameterStore PatternParameters(const Graph& g) {
  ParameterStore params;
  for (const Node& node : g.nodes()) {
    if (node.op != OpKind::kParameter) continue;
    std::vector<float> v(NumElements(node.type.shape));
    for (size_t i = 0; i < v.size(); ++i) v[i] = 0.05f * static_cast<float>(i % 13) - 0.3f;
    absl::StatusOr<Tensor> t = Tensor::FromF32(node.type.shape, v);
    EXPECT_TRUE(t.ok());
    EXPECT_TRUE(params.Set(node.name, *t).ok());
  }
  return params;
}

// `g`'s outputs after one run on 2 threads, each as floats (masks' words
// converted exactly). With `before_run`, once per run k in [0, runs), each
// run's outputs in turn.
std::vector<std::vector<float>> RunOutputs(
    const Graph& g, bool reference, int runs = 1,
    const std::function<void(Executable&, int)>& before_run = nullptr) {
  std::vector<std::vector<float>> out;
  ParameterStore params = PatternParameters(g);
  CompileOptions options;
  options.use_reference_kernels = reference;
  options.threads = 2;
  absl::StatusOr<std::unique_ptr<Executable>> exe = Executable::Compile(g, &params, options);
  EXPECT_TRUE(exe.ok()) << exe.status();
  if (!exe.ok()) return out;
  FillInputs(g, exe->get());
  for (int k = 0; k < runs; ++k) {
    if (before_run) before_run(**exe, k);
    EXPECT_TRUE((*exe)->Run().ok());
    for (ValueId o : g.outputs()) {
      absl::StatusOr<TensorView> v = (*exe)->Output(o);
      EXPECT_TRUE(v.ok());
      if (!v.ok()) return out;
      out.emplace_back();
      for (int64_t i = 0; i < v->num_elements(); ++i) {
        out.back().push_back(v->dtype == DType::kI32 ? static_cast<float>(v->i32()[i])
                                                     : v->f32()[i]);
      }
    }
  }
  return out;
}

// `g`'s outputs from the fast kernels with `v` made an output too, so that
// nothing may absorb it (`absorbed_by`, e.g. AbsorbedProducers, must then
// give it no absorbing node); v's own output is left out.
std::vector<std::vector<float>> RunApart(const Graph& g, ValueId v,
                                         std::vector<ValueId> (*absorbed_by)(const Graph&)) {
  Graph apart = g;
  apart.MarkOutput(v);
  EXPECT_EQ(absorbed_by(apart)[v], kNoValue);
  std::vector<std::vector<float>> out = RunOutputs(apart, false);
  if (!out.empty()) out.pop_back();
  return out;
}

// Outputs `which` of got and want within tol of the largest of want's.
void ExpectNear(const std::vector<std::vector<float>>& got,
                const std::vector<std::vector<float>>& want, std::vector<int> which, float tol) {
  ASSERT_EQ(got.size(), want.size());
  for (int o : which) {
    float scale = 0.0f;
    for (float w : want[o]) scale = std::max(scale, std::abs(w));
    ASSERT_EQ(got[o].size(), want[o].size());
    for (size_t i = 0; i < got[o].size(); ++i) {
      ASSERT_NEAR(got[o][i], want[o][i], tol * scale) << "output " << o << " element " << i;
    }
  }
}

// Rope nodes of one positions value (also through a reshape) and base share
// one cos/sin table, which the first of them computes each run: forward and
// inverse rotations, over two layouts, give the reference kernels' values,
// and positions set anew are honored on the next run.
TEST(Executable, RopesShareOnePositionsTable) {
  Graph g;
  const ValueId x = *g.AddInput("x", {DType::kF32, {2, 5, 3, 8}});  // [B, T, H, D]
  const ValueId pos = *g.AddInput("pos", {DType::kI32, {5}});
  const ValueId per_token = *g.AddNode(OpKind::kReshape, {pos}, ShapeAttrs{{5, 1}});
  const ValueId a = *g.AddNode(OpKind::kRope, {x, per_token}, RopeAttrs{});
  const ValueId back = *g.AddNode(OpKind::kRope, {a, per_token}, RopeAttrs{10000.0f, true});
  const ValueId heads = *g.AddNode(OpKind::kTranspose, {x}, PermuteAttrs{{0, 2, 1, 3}});
  const ValueId b = *g.AddNode(OpKind::kRope, {heads, pos}, RopeAttrs{});
  const ValueId other_base = *g.AddNode(OpKind::kRope, {heads, pos}, RopeAttrs{500.0f, false});
  for (ValueId v : {a, back, b, other_base}) g.MarkOutput(v);
  const std::vector<std::vector<int32_t>> steps = {{0, 1, 2, 3, 4}, {7, 300, 2, 4095, 11}};
  auto set_positions = [&](Executable& exe, int k) {
    TensorView p = *exe.Input("pos");
    std::copy(steps[k].begin(), steps[k].end(), p.i32());
  };
  const std::vector<std::vector<float>> want = RunOutputs(g, true, 2, set_positions);
  const std::vector<std::vector<float>> got = RunOutputs(g, false, 2, set_positions);
  // The tables (10000 and 500 as bases, 5 positions of 8 floats each) are
  // kernel workspace, which EstimateMemory foresees.
  ParameterStore params;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Executable> exe, Executable::Compile(g, &params));
  ASSERT_OK_AND_ASSIGN(MemoryStats estimate, EstimateMemory(g));
  EXPECT_EQ(exe->memory().scratch_bytes, estimate.scratch_bytes);
  CompileOptions reference;
  reference.use_reference_kernels = true;
  ASSERT_OK_AND_ASSIGN(MemoryStats unshared, EstimateMemory(g, reference));
  EXPECT_EQ(estimate.scratch_bytes - unshared.scratch_bytes, 2 * 5 * 8 * sizeof(float));
  ExpectNear(got, want, {0, 1, 2, 3, 4, 5, 6, 7}, 1e-6f);
}

// An inverted residual block's expand layer computed by its depthwise layer
// (AbsorbedProducers), 48 channels at a time: 60 channels leave a block of
// 12; both masks absorbed. Planes of 16×16 keep both nodes.
TEST(Executable, DepthwiseConvolutionsComputeTheirExpandLayer) {
  for (int64_t side : {32, 16}) {
    SCOPED_TRACE(side);
    Graph g;
    ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 6, side, side}}));
    ASSERT_OK_AND_ASSIGN(ValueId w1, g.AddParameter("w1", {DType::kF32, {60, 6, 1, 1}}));
    ASSERT_OK_AND_ASSIGN(ValueId b1, g.AddParameter("b1", {DType::kF32, {60}}));
    ASSERT_OK_AND_ASSIGN(ValueId w2, g.AddParameter("w2", {DType::kF32, {60, 1, 3, 3}}));
    ASSERT_OK_AND_ASSIGN(ValueId b2, g.AddParameter("b2", {DType::kF32, {60}}));
    ASSERT_OK_AND_ASSIGN(ValueId a,
                         g.AddNode(OpKind::kConv2dActivation, {x, w1, b1},
                                   FusedConvAttrs{Conv2dAttrs{}, FusedActivationFn::kRelu6}));
    ASSERT_OK_AND_ASSIGN(ValueId ma, g.AddNode(OpKind::kActivationMask, {a}, ScalarAttrs{6.0f}));
    ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kConv2dActivation, {a, w2, b2},
                                              FusedConvAttrs{Conv2dAttrs{2, 2, 1, 1, 1, 1, 60},
                                                             FusedActivationFn::kRelu6}));
    ASSERT_OK_AND_ASSIGN(ValueId my, g.AddNode(OpKind::kActivationMask, {y}, ScalarAttrs{6.0f}));
    g.MarkOutput(y);
    g.MarkOutput(ma);
    g.MarkOutput(my);
    EXPECT_EQ(AbsorbedProducers(g)[a], side == 32 ? y : kNoValue);
    const std::vector<std::vector<float>> fused = RunOutputs(g, false);
    // Against the reference kernels: y within rounding (masks may differ
    // where rounding crosses 0 or 6).
    ExpectNear(fused, RunOutputs(g, true), {0}, 1e-5f);
    // Against the two nodes run apart (the expanded tensor made an output):
    // the same kernels per plane, so the same bits, masks included, where the
    // pointwise part takes the direct kernel (AVX-512).
    const std::vector<std::vector<float>> separate = RunApart(g, a, AbsorbedProducers);
    if (kernels::BestHostIsa() == kernels::Isa::kAvx512) {
      EXPECT_EQ(fused, separate);
    } else {
      ExpectNear(fused, separate, {0}, 1e-5f);
    }
  }
}

// The input gradients of a whole inverted residual block computed by the
// expand layer's (AbsorbedProducers twice: the projection's by the depthwise
// layer's, that by the expand layer's): masks applied and every bias gradient
// absorbed, 60 channels in blocks of 48 and 12, stride 1 and 2 (the
// projection's dx on 32×32 planes takes the direct kernel at AVX-512, on
// 16×16 ones a GEMM). Against the reference kernels and the nodes run apart.
TEST(Executable, ExpandInputGradientsComputeTheirWholeBlock) {
  for (int32_t stride : {1, 2}) {
    SCOPED_TRACE(stride);
    Graph g;
    const int64_t side = 32 / stride;
    const Shape filtered{2, 60, side, side}, between{2, 60, 32, 32}, dx_shape{2, 6, 32, 32};
    ASSERT_OK_AND_ASSIGN(ValueId dy, g.AddInput("dy", {DType::kF32, {2, 10, side, side}}));
    ASSERT_OK_AND_ASSIGN(ValueId w_p, g.AddParameter("w_p", {DType::kF32, {10, 60, 1, 1}}));
    ASSERT_OK_AND_ASSIGN(ValueId w_dw, g.AddParameter("w_dw", {DType::kF32, {60, 1, 3, 3}}));
    ASSERT_OK_AND_ASSIGN(ValueId w_e, g.AddParameter("w_e", {DType::kF32, {60, 6, 1, 1}}));
    ASSERT_OK_AND_ASSIGN(ValueId m_p,
                         g.AddInput("m_p", {DType::kI32, {2 * 60 * side * side / 32}}));
    ASSERT_OK_AND_ASSIGN(ValueId m_dw, g.AddInput("m_dw", {DType::kI32, {2 * 60 * 32 * 32 / 32}}));
    ASSERT_OK_AND_ASSIGN(ValueId dxp, g.AddNode(OpKind::kConv2dBackwardInput, {dy, w_p, m_p},
                                                Conv2dGradAttrs{Conv2dAttrs{}, filtered}));
    ASSERT_OK_AND_ASSIGN(ValueId db_p,
                         g.AddNode(OpKind::kReduceSum, {dxp}, ReduceAttrs{{0, 2, 3}}));
    ASSERT_OK_AND_ASSIGN(
        ValueId dxe,
        g.AddNode(OpKind::kConv2dBackwardInput, {dxp, w_dw, m_dw},
                  Conv2dGradAttrs{Conv2dAttrs{stride, stride, 1, 1, 1, 1, 60}, between}));
    ASSERT_OK_AND_ASSIGN(ValueId db_dw,
                         g.AddNode(OpKind::kReduceSum, {dxe}, ReduceAttrs{{0, 2, 3}}));
    ASSERT_OK_AND_ASSIGN(ValueId dx, g.AddNode(OpKind::kConv2dBackwardInput, {dxe, w_e},
                                               Conv2dGradAttrs{Conv2dAttrs{}, dx_shape}));
    ASSERT_OK_AND_ASSIGN(ValueId db_e, g.AddNode(OpKind::kReduceSum, {dx}, ReduceAttrs{{0, 2, 3}}));
    g.MarkOutput(dx);
    g.MarkOutput(db_p);
    g.MarkOutput(db_dw);
    g.MarkOutput(db_e);
    const std::vector<ValueId> producers = AbsorbedProducers(g);
    EXPECT_EQ(producers[dxp], dxe);
    EXPECT_EQ(producers[dxe], dx);
    const std::vector<std::vector<float>> fused = RunOutputs(g, false);
    ExpectNear(fused, RunOutputs(g, true), {0, 1, 2, 3}, 1e-5f);
    const std::vector<std::vector<float>> separate = RunApart(g, dxp, AbsorbedProducers);
    ExpectNear(fused, separate, {0, 1, 2, 3}, 1e-6f);
  }
}

// An update reading a bias gradient that a fused pair writes (the depthwise
// input gradient's channel sums, written when the expand layer's node runs
// the pair) placed between the two nodes, as reorder_updates places it: it
// must see this step's sums.
TEST(Executable, UpdatesReadTheBiasGradientsAFusedPairWrites) {
  Graph g;
  const Shape between{2, 60, 32, 32}, dx_shape{2, 6, 32, 32};
  ASSERT_OK_AND_ASSIGN(ValueId dy, g.AddInput("dy", {DType::kF32, {2, 60, 32, 32}}));
  ASSERT_OK_AND_ASSIGN(ValueId w_dw, g.AddParameter("w_dw", {DType::kF32, {60, 1, 3, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId w_e, g.AddParameter("w_e", {DType::kF32, {60, 6, 1, 1}}));
  ASSERT_OK_AND_ASSIGN(ValueId b, g.AddParameter("b_dw", {DType::kF32, {60}}));
  ASSERT_OK_AND_ASSIGN(ValueId dxe,
                       g.AddNode(OpKind::kConv2dBackwardInput, {dy, w_dw},
                                 Conv2dGradAttrs{Conv2dAttrs{1, 1, 1, 1, 1, 1, 60}, between}));
  ASSERT_OK_AND_ASSIGN(ValueId db, g.AddNode(OpKind::kReduceSum, {dxe}, ReduceAttrs{{0, 2, 3}}));
  ASSERT_OK(g.AddNode(OpKind::kSgdUpdate, {b, db}, SgdAttrs{0.5f}).status());
  ASSERT_OK_AND_ASSIGN(ValueId dx, g.AddNode(OpKind::kConv2dBackwardInput, {dxe, w_e},
                                             Conv2dGradAttrs{Conv2dAttrs{}, dx_shape}));
  g.MarkOutput(dx);
  ASSERT_EQ(AbsorbedProducers(g)[dxe], dx);
  std::vector<std::vector<float>> bias;
  for (bool reference : {false, true}) {
    ParameterStore params = PatternParameters(g);
    CompileOptions options;
    options.use_reference_kernels = reference;
    options.threads = 2;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Executable> exe, Executable::Compile(g, &params, options));
    FillInputs(g, exe.get());
    ASSERT_OK(exe->Run());
    const Tensor* t = params.Find("b_dw");
    ASSERT_NE(t, nullptr);
    bias.emplace_back(t->f32(), t->f32() + t->num_elements());
  }
  ExpectNear({bias[0]}, {bias[1]}, {0}, 1e-5f);
}

// A scaling over other channels than the convolution's outputs (the weight
// read as [1, in, out]) keeps its node: the convolution scales by output
// channel.
TEST(Executable, WeightScalingsOverOtherChannelsKeepTheirNode) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 6, 4, 4}}));
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {10, 6, 1, 1}}));
  ASSERT_OK_AND_ASSIGN(ValueId gamma, g.AddParameter("gamma", {DType::kF32, {6}}));
  ASSERT_OK_AND_ASSIGN(ValueId zeros, g.AddNode(OpKind::kFill, {}, FillAttrs{0.0f, {6}}));
  ASSERT_OK_AND_ASSIGN(ValueId var, g.AddNode(OpKind::kFill, {}, FillAttrs{0.7f, {6}}));
  ASSERT_OK_AND_ASSIGN(ValueId rows, g.AddNode(OpKind::kReshape, {w}, ShapeAttrs{{1, 6, 10}}));
  ASSERT_OK_AND_ASSIGN(
      ValueId scaled,
      g.AddNode(OpKind::kBatchNormInference, {rows, zeros, var, gamma, zeros}, BatchNormAttrs{}));
  ASSERT_OK_AND_ASSIGN(ValueId wf,
                       g.AddNode(OpKind::kReshape, {scaled}, ShapeAttrs{{10, 6, 1, 1}}));
  ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kConv2d, {x, wf}, Conv2dAttrs{}));
  g.MarkOutput(y);
  EXPECT_EQ(AbsorbedWeightScalings(g)[scaled], kNoValue);
  ExpectNear(RunOutputs(g, false), RunOutputs(g, true), {0}, 1e-5f);
}

// A whole inverted residual block computed by its projection (AbsorbedProducers
// twice: the expand layer by the depthwise one, that by the projection), 48
// channels at a time with a block of 12 left, both masks absorbed, stride 1
// and 2. The projection sums the blocks in turn, so against the nodes run
// apart it matches within rounding; the masks are the same bits.
TEST(Executable, ProjectionsComputeTheirInvertedResidualBlock) {
  for (int32_t stride : {1, 2}) {
    SCOPED_TRACE(stride);
    Graph g;
    ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {3, 6, 32, 32}}));
    ASSERT_OK_AND_ASSIGN(ValueId w1, g.AddParameter("w1", {DType::kF32, {60, 6, 1, 1}}));
    ASSERT_OK_AND_ASSIGN(ValueId b1, g.AddParameter("b1", {DType::kF32, {60}}));
    ASSERT_OK_AND_ASSIGN(ValueId w2, g.AddParameter("w2", {DType::kF32, {60, 1, 3, 3}}));
    ASSERT_OK_AND_ASSIGN(ValueId b2, g.AddParameter("b2", {DType::kF32, {60}}));
    ASSERT_OK_AND_ASSIGN(ValueId w3, g.AddParameter("w3", {DType::kF32, {10, 60, 1, 1}}));
    ASSERT_OK_AND_ASSIGN(ValueId b3, g.AddParameter("b3", {DType::kF32, {10}}));
    ASSERT_OK_AND_ASSIGN(ValueId a,
                         g.AddNode(OpKind::kConv2dActivation, {x, w1, b1},
                                   FusedConvAttrs{Conv2dAttrs{}, FusedActivationFn::kRelu6}));
    ASSERT_OK_AND_ASSIGN(ValueId ma, g.AddNode(OpKind::kActivationMask, {a}, ScalarAttrs{6.0f}));
    ASSERT_OK_AND_ASSIGN(ValueId d,
                         g.AddNode(OpKind::kConv2dActivation, {a, w2, b2},
                                   FusedConvAttrs{Conv2dAttrs{stride, stride, 1, 1, 1, 1, 60},
                                                  FusedActivationFn::kRelu6}));
    ASSERT_OK_AND_ASSIGN(ValueId md, g.AddNode(OpKind::kActivationMask, {d}, ScalarAttrs{6.0f}));
    ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kConv2d, {d, w3, b3}, Conv2dAttrs{}));
    g.MarkOutput(y);
    g.MarkOutput(ma);
    g.MarkOutput(md);
    const std::vector<ValueId> producers = AbsorbedProducers(g);
    EXPECT_EQ(producers[a], d);
    EXPECT_EQ(producers[d], y);
    const std::vector<std::vector<float>> fused = RunOutputs(g, false);
    ExpectNear(fused, RunOutputs(g, true), {0}, 1e-5f);
    const std::vector<std::vector<float>> separate = RunApart(g, d, AbsorbedProducers);
    ExpectNear(fused, separate, {0}, 1e-6f);
    EXPECT_EQ(fused[1], separate[1]);
    EXPECT_EQ(fused[2], separate[2]);
  }
}

// The expand layer's input gradient computing the depthwise layer's it reads
// (AbsorbedProducers): masked and unmasked, both bias gradients absorbed,
// 60 channels in blocks of 48 and 12.
TEST(Executable, ExpandInputGradientsComputeTheDepthwiseOne) {
  for (bool masked : {true, false}) {
    SCOPED_TRACE(masked ? "masked" : "unmasked");
    Graph g;
    const Shape between{2, 60, 32, 32}, dx_shape{2, 6, 32, 32};
    ASSERT_OK_AND_ASSIGN(ValueId dy, g.AddInput("dy", {DType::kF32, {2, 60, 16, 16}}));
    ASSERT_OK_AND_ASSIGN(ValueId w_dw, g.AddParameter("w_dw", {DType::kF32, {60, 1, 3, 3}}));
    ASSERT_OK_AND_ASSIGN(ValueId w_e, g.AddParameter("w_e", {DType::kF32, {60, 6, 1, 1}}));
    std::vector<ValueId> dw_in = {dy, w_dw};
    if (masked) {
      ASSERT_OK_AND_ASSIGN(ValueId m, g.AddInput("m", {DType::kI32, {2 * 60 * 32 * 32 / 32}}));
      dw_in.push_back(m);
    }
    ASSERT_OK_AND_ASSIGN(ValueId dxe,
                         g.AddNode(OpKind::kConv2dBackwardInput, dw_in,
                                   Conv2dGradAttrs{Conv2dAttrs{2, 2, 1, 1, 1, 1, 60}, between}));
    ASSERT_OK_AND_ASSIGN(ValueId db_dw,
                         g.AddNode(OpKind::kReduceSum, {dxe}, ReduceAttrs{{0, 2, 3}}));
    ASSERT_OK_AND_ASSIGN(ValueId dx, g.AddNode(OpKind::kConv2dBackwardInput, {dxe, w_e},
                                               Conv2dGradAttrs{Conv2dAttrs{}, dx_shape}));
    ASSERT_OK_AND_ASSIGN(ValueId db_e, g.AddNode(OpKind::kReduceSum, {dx}, ReduceAttrs{{0, 2, 3}}));
    g.MarkOutput(dx);
    g.MarkOutput(db_dw);
    g.MarkOutput(db_e);
    EXPECT_EQ(AbsorbedProducers(g)[dxe], dx);
    const std::vector<std::vector<float>> fused = RunOutputs(g, false);
    ExpectNear(fused, RunOutputs(g, true), {0, 1, 2}, 1e-5f);
    // Apart, the depthwise gradient and its channel sums are the same bits;
    // the expand layer's gradient sums the channels in blocks, not in one GEMM.
    const std::vector<std::vector<float>> separate = RunApart(g, dxe, AbsorbedProducers);
    EXPECT_EQ(fused[1], separate[1]);
    ExpectNear(fused, separate, {0, 2}, 1e-6f);

    // No buffer for the gradient between them; the depthwise operands live
    // until the expand layer's node.
    ArenaOptions options;
    options.written_by = std::vector<ValueId>(g.num_nodes(), kNoValue);
    options.outside_arena = std::vector<bool>(g.num_nodes(), false);
    options.outside_arena[dxe] = true;
    options.read_until = std::vector<ValueId>(g.num_nodes(), kNoValue);
    options.read_until[dy] = dx;
    ASSERT_OK_AND_ASSIGN(ArenaLayout layout, PlanArena(g, options));
    EXPECT_EQ(std::count(layout.values.begin(), layout.values.end(), dxe), 0);
    options.read_until[dy] = dy;
    EXPECT_THAT(PlanArena(g, options).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not later")));
  }
}

// Frozen BatchNorm scalings of pointwise weights computed by the convolution
// reading them (AbsorbedWeightScalings), on each path: forward through a GEMM
// per sample (s with the bias after it) and through the direct kernel (W·s as
// it packs W, ReLU6 after), input gradients with s·dY in scratch (dY smaller
// than W) and with W·s in scratch. Against the reference kernels and against
// the scaling run as its own node (made an output).
TEST(Executable, PointwiseConvolutionsScaleTheirWeights) {
  struct Case {
    const char* name;
    OpKind op;
    Shape in, w;
    bool same_bits;  // apart: the same values scaled and summed in the same order
  };
  const Case cases[] = {
      {"forward, GEMM", OpKind::kConv2d, {3, 160, 8, 8}, {40, 160, 1, 1}, false},
      {"forward, direct", OpKind::kConv2dActivation, {3, 24, 4, 4}, {96, 24, 1, 1}, true},
      {"input gradient, s·dY", OpKind::kConv2dBackwardInput, {4, 64, 4, 4}, {64, 80, 1, 1}, false},
      {"input gradient, W·s", OpKind::kConv2dBackwardInput, {2, 24, 8, 8}, {24, 16, 1, 1}, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const int64_t o = c.w[0], k = c.w[1];
    Graph g;
    ASSERT_OK_AND_ASSIGN(ValueId in, g.AddInput("x", {DType::kF32, c.in}));
    ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, c.w}));
    ASSERT_OK_AND_ASSIGN(ValueId gamma, g.AddParameter("gamma", {DType::kF32, {o}}));
    ASSERT_OK_AND_ASSIGN(ValueId zeros, g.AddNode(OpKind::kFill, {}, FillAttrs{0.0f, {o}}));
    ASSERT_OK_AND_ASSIGN(ValueId var, g.AddNode(OpKind::kFill, {}, FillAttrs{0.7f, {o}}));
    ASSERT_OK_AND_ASSIGN(ValueId rows, g.AddNode(OpKind::kReshape, {w}, ShapeAttrs{{1, o, k}}));
    ASSERT_OK_AND_ASSIGN(
        ValueId scaled,
        g.AddNode(OpKind::kBatchNormInference, {rows, zeros, var, gamma, zeros}, BatchNormAttrs{}));
    ASSERT_OK_AND_ASSIGN(ValueId wf, g.AddNode(OpKind::kReshape, {scaled}, ShapeAttrs{c.w}));
    ValueId y;
    if (c.op == OpKind::kConv2dBackwardInput) {
      const Shape dx{c.in[0], k, c.in[2], c.in[3]};
      ASSERT_OK_AND_ASSIGN(y, g.AddNode(c.op, {in, wf}, Conv2dGradAttrs{Conv2dAttrs{}, dx}));
    } else {
      ASSERT_OK_AND_ASSIGN(ValueId b, g.AddParameter("b", {DType::kF32, {o}}));
      if (c.op == OpKind::kConv2d) {
        ASSERT_OK_AND_ASSIGN(y, g.AddNode(c.op, {in, wf, b}, Conv2dAttrs{}));
      } else {
        ASSERT_OK_AND_ASSIGN(
            y,
            g.AddNode(c.op, {in, wf, b}, FusedConvAttrs{Conv2dAttrs{}, FusedActivationFn::kRelu6}));
      }
    }
    g.MarkOutput(y);
    EXPECT_EQ(AbsorbedWeightScalings(g)[scaled], y);
    EXPECT_EQ(AbsorbedWeightScalings(g)[wf], y);
    const std::vector<std::vector<float>> absorbed = RunOutputs(g, false);
    ExpectNear(absorbed, RunOutputs(g, true), {0}, 1e-5f);
    const std::vector<std::vector<float>> separate = RunApart(g, scaled, AbsorbedWeightScalings);
    if (c.same_bits && kernels::BestHostIsa() == kernels::Isa::kAvx512) {
      EXPECT_EQ(absorbed, separate);
    } else {
      ExpectNear(absorbed, separate, {0}, 1e-5f);
    }
  }
}

// A cross-entropy loss its gradient computes: the bits the loss's own fast
// kernel computes from the same logits, also when the gradient overwrites
// the logits in place. A loss another node reads keeps its node.
TEST(Executable, CrossEntropyGradientsComputeTheirLoss) {
  for (bool read : {false, true}) {
    SCOPED_TRACE(read ? "loss read by a node" : "loss only an output");
    Graph g;
    const Shape z_shape{6, 37};
    ASSERT_OK_AND_ASSIGN(ValueId in, g.AddInput("z", {DType::kF32, z_shape}));
    ASSERT_OK_AND_ASSIGN(ValueId labels, g.AddInput("labels", {DType::kI32, {6}}));
    ASSERT_OK_AND_ASSIGN(ValueId dloss, g.AddInput("dloss", {DType::kF32, {}}));
    // The logits die at the gradient, which may then overwrite them.
    ASSERT_OK_AND_ASSIGN(ValueId z, g.AddNode(OpKind::kScale, {in}, ScalarAttrs{3.0f}));
    const CrossEntropyAttrs attrs{2};  // label 2 is ignored
    ASSERT_OK_AND_ASSIGN(ValueId loss, g.AddNode(OpKind::kSoftmaxCrossEntropy, {z, labels}, attrs));
    ASSERT_OK_AND_ASSIGN(ValueId dz,
                         g.AddNode(OpKind::kSoftmaxCrossEntropyGrad, {z, labels, dloss}, attrs));
    g.MarkOutput(loss);
    g.MarkOutput(dz);
    if (read) {
      ASSERT_OK_AND_ASSIGN(ValueId twice, g.AddNode(OpKind::kScale, {loss}, ScalarAttrs{2.0f}));
      g.MarkOutput(twice);
    }
    EXPECT_EQ(AbsorbedLosses(g)[loss], read ? kNoValue : dz);

    ParameterStore params;
    CompileOptions options;
    options.threads = 2;
    ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(g, &params, options));
    std::vector<float> zs(6 * 37);
    for (size_t i = 0; i < zs.size(); ++i) zs[i] = 0.37f * static_cast<float>(i % 17) - 2.0f;
    ASSERT_OK_AND_ASSIGN(Tensor zt, Tensor::FromF32(z_shape, zs));
    ASSERT_OK(exe->SetInput("z", zt));
    ASSERT_OK_AND_ASSIGN(TensorView lv, exe->Input("labels"));
    const int32_t label_values[] = {0, 36, 2, 5, 2, 17};
    std::copy(std::begin(label_values), std::end(label_values), lv.i32());
    ASSERT_OK_AND_ASSIGN(TensorView dv, exe->Input("dloss"));
    dv.f32()[0] = 1.0f;
    ASSERT_OK(exe->Run());
    ASSERT_OK_AND_ASSIGN(TensorView got, exe->Output(loss));

    // The loss's fast kernel on the same logits.
    std::vector<float> logits(zs.size());
    for (size_t i = 0; i < zs.size(); ++i) logits[i] = zs[i] * 3.0f;
    Node node;
    node.op = OpKind::kSoftmaxCrossEntropy;
    node.attrs = attrs;
    const Shape label_shape{6}, scalar{};
    const TensorView operands[] = {{logits.data(), &z_shape}, {lv.data, &label_shape, DType::kI32}};
    const TensorType types[] = {{DType::kF32, z_shape}, {DType::kI32, label_shape}};
    const TensorType* type_ptrs[] = {&types[0], &types[1]};
    const ops::OpDef& def = ops::GetOpDef(OpKind::kSoftmaxCrossEntropy);
    std::vector<float> scratch(def.scratch_bytes(node, absl::MakeConstSpan(type_ptrs)) / 4 + 1);
    float want = 0.0f;
    ops::StepInfo step;
    ops::KernelArgs args{&node, operands, 2, {&want, &scalar}, &step};
    args.scratch = scratch.data();
    def.fast(args);
    EXPECT_EQ(got.f32()[0], want);
    EXPECT_GT(want, 0.0f);
  }
}

TEST(Executable, PlanArenaRejectsAWriterThatIsNotEarlier) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {4}}));
  ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kScale, {x}, ScalarAttrs{2.0f}));
  g.MarkOutput(y);
  ArenaOptions options;
  options.written_by = {kNoValue, y};
  EXPECT_THAT(PlanArena(g, options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("written by node 1, which is not earlier")));
  options.written_by = {kNoValue};
  EXPECT_THAT(PlanArena(g, options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("written_by has 1 entries")));
}

TEST(Executable, RejectsMissingWeightAndTypeMismatch) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(Build(&f, autodiff::OptimizerConfig::Sgd({0.1f, 0.0f, 0.0f})));
  ParameterStore empty;
  EXPECT_THAT(
      Executable::Compile(f.train_graph, &empty),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("weight 'fc1.weight' (f32[16, 20]) is not in the parameter store")));
  ParameterStore wrong;
  ASSERT_OK(wrong.Set("fc1.weight", Tensor(DType::kF32, {20, 16})));
  EXPECT_THAT(Executable::Compile(f.train_graph, &wrong),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'fc1.weight' is f32[20, 16] in the store but f32[16, 20]")));
  EXPECT_THAT(f.params.Set("fc1.weight", Tensor(DType::kF32, {3})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot assign f32[3]")));
}

TEST(Executable, RejectsBadInputsAndOutputs) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(Build(&f, autodiff::OptimizerConfig::Sgd({0.1f, 0.0f, 0.0f})));
  ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(f.train_graph, &f.params));
  EXPECT_THAT(exe->Input("images"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no input 'images'")));
  EXPECT_THAT(exe->SetInput("x", Tensor(DType::kF32, {8, 21})),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("input 'x' expects f32[8, 20], got f32[8, 21]")));
  EXPECT_THAT(exe->Output(f.model.input),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a marked output")));
}

}  // namespace
}  // namespace fleettune::engine::runtime
