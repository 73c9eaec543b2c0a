// kElementwiseChain: a chain of elementwise ops run as one instruction.
//
//   inputs (in0, ..., inK), all f32 of one shape; ElementwiseChainAttrs
//   y = s_n(...s_1(s_0(in_a, in_b))...)
//
// Each step (attrs.h ElementwiseStep) is add, sub, mul, div, scale, relu,
// activation, relu_grad or activation_grad with that op's semantics; its
// operands are the previous step's result or inputs. Only the elementwise
// fusion pass (engine/passes/fuse_elementwise.h) emits it, after autodiff:
// not differentiable, no gradient rule. Broadcasting is not supported: every
// input has the output's shape (the pass fuses only such ops).
//
// The reference kernel runs the steps one after another with each op's own
// reference kernel, the running value in the output buffer. The fast kernel
// makes one pass over the data: the elements are split over the threads and
// walked in tiles of kTile floats that stay in L1; every step runs over the
// tile (a loop the compiler vectorizes, or the vectorized activation), and
// only the last step writes the output. Per element it does the arithmetic
// the unfused ops' fast kernels do, in the same order, so a chain computes
// bit for bit what the ops it replaced compute.
#include <algorithm>
#include <cmath>

#include "engine/base/status_macros.h"
#include "engine/kernels/parallel.h"
#include "engine/ops/kernel_parts.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

using Step = ElementwiseStep;

absl::Status CheckOperand(const Node& node, int k, int32_t operand, int num_inputs,
                          std::vector<bool>& used) {
  if (operand == Step::kPrevious) {
    if (k == 0) return OpError(node, "step 0 reads the previous step's result");
    return absl::OkStatus();
  }
  if (operand < 0 || operand >= num_inputs) {
    return OpError(node, "step ", k, " reads input ", operand, " of ", num_inputs);
  }
  used[operand] = true;
  return absl::OkStatus();
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const auto& steps = std::get<ElementwiseChainAttrs>(node.attrs).steps;
  if (steps.empty() || steps.size() > static_cast<size_t>(kMaxElementwiseChainSteps)) {
    return OpError(node, "needs 1 to ", kMaxElementwiseChainSteps, " steps, got ", steps.size());
  }
  for (size_t i = 0; i < in.size(); ++i) {
    RETURN_IF_ERROR(ExpectDType(node, *in[i], DType::kF32, "every input"));
    if (in[i]->shape != in[0]->shape) {
      return OpError(node, "input ", i, " ", TypeToString(*in[i]), " and input 0 ",
                     TypeToString(*in[0]), " differ (no broadcasting)");
    }
  }
  const int n = static_cast<int>(in.size());
  std::vector<bool> used(n, false);
  for (int k = 0; k < static_cast<int>(steps.size()); ++k) {
    const Step& s = steps[k];
    if (!IsElementwiseChainStepOp(s.op)) {
      return OpError(node, "step ", k, ": ", GetOpDef(s.op).name, " is not an elementwise step");
    }
    if ((s.op == OpKind::kActivation || s.op == OpKind::kActivationGrad) &&
        static_cast<int>(s.fn) > static_cast<int>(ActivationFn::kTanh)) {
      return OpError(node, "step ", k, ": unknown activation function ", static_cast<int>(s.fn));
    }
    if (s.op != OpKind::kActivation && s.op != OpKind::kActivationGrad &&
        s.fn != ElementwiseStep{}.fn) {
      return OpError(node, "step ", k, ": ", GetOpDef(s.op).name, " takes no activation function");
    }
    RETURN_IF_ERROR(CheckOperand(node, k, s.a, n, used));
    if (IsUnaryElementwiseChainStepOp(s.op)) {
      if (s.b != Step::kPrevious) {
        return OpError(node, "step ", k, ": unary ", GetOpDef(s.op).name, " has operand b");
      }
    } else {
      RETURN_IF_ERROR(CheckOperand(node, k, s.b, n, used));
    }
    const bool reads_previous =
        s.a == Step::kPrevious || (!IsUnaryElementwiseChainStepOp(s.op) && s.b == Step::kPrevious);
    if (k > 0 && !reads_previous) {
      return OpError(node, "step ", k, " does not read the previous step's result");
    }
  }
  for (int i = 0; i < n; ++i) {
    if (!used[i]) return OpError(node, "input ", i, " is not read by any step");
  }
  return *in[0];
}

// The op and attributes of one step, as a node for that op's kernel. Built on
// the stack; allocates nothing.
Node StepNode(const Step& s) {
  Node n;
  n.op = s.op;
  if (s.op == OpKind::kScale) n.attrs = ScalarAttrs{s.value};
  if (s.op == OpKind::kActivation || s.op == OpKind::kActivationGrad) {
    n.attrs = ActivationAttrs{s.fn};
  }
  return n;
}

// Step by step with each op's reference kernel, over the whole tensor; the
// output buffer holds the running value (every step op is safe in place).
void Reference(const KernelArgs& args) {
  for (const Step& s : args.attrs<ElementwiseChainAttrs>().steps) {
    const Node inner = StepNode(s);
    auto operand = [&](int32_t i) { return i == Step::kPrevious ? args.output : args.in(i); };
    const TensorView operands[2] = {
        operand(s.a), IsUnaryElementwiseChainStepOp(s.op) ? args.output : operand(s.b)};
    KernelArgs a;
    a.node = &inner;
    a.inputs = operands;
    a.num_inputs = IsUnaryElementwiseChainStepOp(s.op) ? 1 : 2;
    a.output = args.output;
    a.step = args.step;
    GetOpDef(s.op).reference(a);
  }
}

// One step over n elements: y[i] = op(a[i], b[i]) as the op's fast kernel (or
// its only kernel) computes it. y may be a or b.
void RunStep(const Step& s, const float* a, const float* b, float* y, int64_t n) {
  switch (s.op) {
    case OpKind::kAdd:
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
      return;
    case OpKind::kSub:
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] - b[i];
      return;
    case OpKind::kMul:
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
      return;
    case OpKind::kDiv:
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] / b[i];
      return;
    case OpKind::kScale:
      for (int64_t i = 0; i < n; ++i) y[i] = s.value * a[i];
      return;
    case OpKind::kRelu:
      return parts::ReluRange(a, y, n);
    case OpKind::kActivation:
      return parts::ActivationFast(s.fn, a, y, n);
    case OpKind::kReluGrad:
      for (int64_t i = 0; i < n; ++i) {
        const float g = a[i];
        y[i] = b[i] > 0.0f ? g : 0.0f;
      }
      return;
    case OpKind::kActivationGrad:
      return parts::ActivationGradFast(s.fn, a, b, y, n);
    default:
      return;
  }
}

int64_t StepCost(const Step& s) {
  if (s.op == OpKind::kActivation || s.op == OpKind::kActivationGrad) {
    return parts::ActivationCost(s.fn);
  }
  return 1;
}

// Floats per tile: 4 KiB, so the tile and a few input tiles stay in L1.
constexpr int64_t kTile = 1024;

void Fast(const KernelArgs& args) {
  const auto& steps = args.attrs<ElementwiseChainAttrs>().steps;
  const int last = static_cast<int>(steps.size()) - 1;
  int64_t cost = 0;
  for (const Step& s : steps) cost += StepCost(s);
  float* y = args.output.f32();
  kernels::ParallelFor(args.output.num_elements(), cost, [&](int64_t begin, int64_t end) {
    alignas(64) float tile[kTile];
    for (int64_t t = begin; t < end; t += kTile) {
      const int64_t n = std::min(kTile, end - t);
      auto operand = [&](int32_t i) -> const float* {
        return i == Step::kPrevious ? tile : args.in(i).f32() + t;
      };
      for (int k = 0; k <= last; ++k) {
        const Step& s = steps[k];
        // The last step writes the output: an input the output overwrites
        // (in place) is read at element i before element i is written.
        RunStep(s, operand(s.a), IsUnaryElementwiseChainStepOp(s.op) ? nullptr : operand(s.b),
                k == last ? y + t : tile, n);
      }
    }
  });
}

OpTestCase Case(int num_inputs, std::vector<Step> steps, Shape shape = {3, 4},
                std::vector<int> positive = {}) {
  OpTestCase c;
  for (int i = 0; i < num_inputs; ++i) c.inputs.push_back({DType::kF32, shape});
  c.attrs = ElementwiseChainAttrs{std::move(steps)};
  c.positive_inputs = std::move(positive);
  return c;
}

Step Binary(OpKind op, int32_t a, int32_t b) { return Step{op, a, b}; }
Step Unary(OpKind op, int32_t a) { return Step{op, a, Step::kPrevious}; }
Step Act(ActivationFn fn, int32_t a) { return Step{OpKind::kActivation, a, Step::kPrevious, fn}; }

std::vector<OpTestCase> TestCases() {
  constexpr int32_t kPrev = Step::kPrevious;
  return {
      // Gradient accumulation: (a + b) + c.
      Case(3, {Binary(OpKind::kAdd, 0, 1), Binary(OpKind::kAdd, kPrev, 2)}),
      // SwiGLU backward: activation_grad(dy ⊙ up, gate).
      Case(3, {Binary(OpKind::kMul, 0, 1),
               Step{OpKind::kActivationGrad, kPrev, 2, ActivationFn::kSilu}}),
      // Every step kind, previous on either side, an input read twice.
      Case(4,
           {Binary(OpKind::kSub, 0, 1), Step{OpKind::kScale, kPrev, kPrev, {}, -0.75f},
            Binary(OpKind::kDiv, kPrev, 2), Act(ActivationFn::kGeluErf, kPrev),
            Binary(OpKind::kMul, kPrev, 0), Unary(OpKind::kRelu, kPrev),
            Binary(OpKind::kReluGrad, 3, kPrev),
            Step{OpKind::kActivationGrad, kPrev, 3, ActivationFn::kTanh}},
           {3, 4}, {2}),
      // Unary start: tanh(x) · y, then sigmoid.
      Case(2, {Act(ActivationFn::kTanh, 0), Binary(OpKind::kMul, kPrev, 1),
               Act(ActivationFn::kSigmoid, kPrev)}),
  };
}

}  // namespace

OpDef ElementwiseChainOpDef() {
  OpDef def;
  def.name = "elementwise_chain";
  def.attrs_index = AttrsIndexOf<ElementwiseChainAttrs>();
  def.min_inputs = 1;
  def.max_inputs = kMaxElementwiseChainSteps + 1;
  def.infer = Infer;
  def.reference = Reference;
  def.fast = Fast;
  // Not differentiable: emitted after autodiff by the fusion pass only
  // (UnfuseActivations gives back the differentiable steps).
  def.gradient = nullptr;
  def.test_cases = TestCases;
  return def;
}

}  // namespace fleettune::engine::ops
