// Every op InPlaceCandidates() names must compute the same result when its
// output buffer is the candidate input's buffer: runs the reference and the
// fast kernel of each such op, on its conformance test cases, both ways.
// A kernel rewrite that breaks in-place safety fails here.
#include <cstring>
#include <random>

#include "engine/base/status_matchers.h"
#include "engine/ops/op_registry.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::runtime {
namespace {

Tensor RandomTensor(const TensorType& type, const ops::OpTestCase& c, int index,
                    std::mt19937* rng) {
  Tensor t(type.dtype, type.shape);
  const bool positive = std::find(c.positive_inputs.begin(), c.positive_inputs.end(), index) !=
                        c.positive_inputs.end();
  if (type.dtype == DType::kF32) {
    std::uniform_real_distribution<float> u(positive ? 0.1f : -3.0f, positive ? 1.0f : 7.0f);
    for (float& v : t.f32_span()) v = u(*rng);
  } else {
    for (int64_t i = 0; i < t.num_elements(); ++i) {
      t.i32()[i] = static_cast<int32_t>((*rng)() % std::max(1, c.int_upper));
    }
  }
  return t;
}

TEST(InPlace, EveryCandidateKernelComputesTheSameInPlace) {
  std::mt19937 rng(1);
  int checked = 0;
  for (int k = 0; k < kNumOpKinds; ++k) {
    const OpKind op = static_cast<OpKind>(k);
    const ops::OpDef& def = ops::GetOpDef(op);
    if (def.test_cases == nullptr || op == OpKind::kInput || op == OpKind::kParameter) continue;
    for (const ops::OpTestCase& c : def.test_cases()) {
      Graph g;
      std::vector<ValueId> ids;
      for (size_t i = 0; i < c.inputs.size(); ++i) {
        ASSERT_OK_AND_ASSIGN(ValueId id, g.AddInput("in" + std::to_string(i), c.inputs[i]));
        ids.push_back(id);
      }
      absl::StatusOr<ValueId> node = g.AddNode(op, ids, c.attrs);
      ASSERT_OK(node.status()) << def.name;
      const std::vector<int> candidates = InPlaceCandidates(g, *node);
      if (candidates.empty()) continue;
      const Node& n = g.node(*node);
      std::vector<Tensor> inputs;
      for (size_t i = 0; i < c.inputs.size(); ++i) {
        inputs.push_back(RandomTensor(c.inputs[i], c, static_cast<int>(i), &rng));
      }
      std::vector<ops::KernelFn> kernels = {def.reference};
      if (def.fast != nullptr) kernels.push_back(def.fast);
      for (ops::KernelFn fn : kernels) {
        ops::StepInfo step;
        std::vector<const TensorType*> types;
        for (const TensorType& t : c.inputs) types.push_back(&t);
        std::vector<float> scratch(
            1 + (def.scratch_bytes == nullptr ? 0 : def.scratch_bytes(n, types) / sizeof(float)));
        auto run = [&](int in_place_index) {
          Tensor out(n.type.dtype, n.type.shape);
          std::vector<TensorView> views;
          for (Tensor& t : inputs) views.push_back(t.view());
          Tensor copy;
          if (in_place_index >= 0) {
            copy = inputs[in_place_index];
            std::memcpy(out.raw(), copy.raw(), copy.bytes());
            views[in_place_index] = out.view();
          }
          ops::KernelArgs args;
          args.node = &n;
          args.inputs = views.data();
          args.num_inputs = static_cast<int>(views.size());
          args.output = out.view();
          args.step = &step;
          args.scratch = scratch.data();
          fn(args);
          return out;
        };
        const Tensor want = run(-1);
        for (int i : candidates) {
          const Tensor got = run(i);
          EXPECT_EQ(std::memcmp(want.raw(), got.raw(), want.bytes()), 0)
              << def.name << " in place over input " << i;
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 20);
}

}  // namespace
}  // namespace fleettune::engine::runtime
