// GoogleTest matchers for absl::Status (Abseil 20220623 ships none).
//
//   EXPECT_THAT(Parse(bytes), StatusIs(absl::StatusCode::kInvalidArgument,
//                                      HasSubstr("magic")));
//   ASSERT_OK(status);  ASSERT_OK_AND_ASSIGN(auto graph, Build());
#ifndef FLEETTUNE_ENGINE_BASE_STATUS_MATCHERS_H_
#define FLEETTUNE_ENGINE_BASE_STATUS_MATCHERS_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/base/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER_P2(StatusIs, code, message_matcher,
           std::string("has status code ") + absl::StatusCodeToString(code)) {
  const absl::Status& status = ::fleettune::testing::GetStatus(arg);
  *result_listener << "whose status is " << status;
  return status.code() == code &&
         ::testing::ExplainMatchResult(message_matcher, std::string(status.message()),
                                       result_listener);
}

MATCHER_P(StatusIs, code, std::string("has status code ") + absl::StatusCodeToString(code)) {
  const absl::Status& status = ::fleettune::testing::GetStatus(arg);
  *result_listener << "whose status is " << status;
  return status.code() == code;
}

MATCHER(IsOk, "is OK") {
  const absl::Status& status = ::fleettune::testing::GetStatus(arg);
  *result_listener << "whose status is " << status;
  return status.ok();
}

}  // namespace fleettune::testing

#define ASSERT_OK(expr) ASSERT_THAT(expr, ::fleettune::testing::IsOk())
#define EXPECT_OK(expr) EXPECT_THAT(expr, ::fleettune::testing::IsOk())

#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  FT_ASSERT_OK_AND_ASSIGN_IMPL_(FT_STATUS_CONCAT_(ft_statusor_, __LINE__), lhs, rexpr)
#define FT_ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  ASSERT_OK(statusor.status());                             \
  lhs = std::move(statusor).value()

#endif  // FLEETTUNE_ENGINE_BASE_STATUS_MATCHERS_H_
