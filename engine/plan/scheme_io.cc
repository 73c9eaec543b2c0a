#include "engine/plan/scheme_io.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace fleettune::engine::plan {
namespace {

// Keeps the first syntax error with its position.
class FirstError : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (error_.empty())
      error_ = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

}  // namespace

absl::StatusOr<scheme::UpdateScheme> SchemeFromProto(const v1::UpdateScheme& proto) {
  if (proto.rules_size() > kMaxSchemeRules) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheme has ", proto.rules_size(), " rules, more than ", kMaxSchemeRules));
  }
  scheme::UpdateScheme out;
  out.name = proto.name();
  for (int i = 0; i < proto.rules_size(); ++i) {
    const v1::UpdateRule& r = proto.rules(i);
    scheme::Rule rule;
    rule.pattern = r.pattern();
    rule.channel_fraction = r.channel_fraction();
    switch (r.mode()) {
      case v1::UPDATE_MODE_FROZEN:
        rule.mode = scheme::UpdateMode::kFrozen;
        break;
      case v1::UPDATE_MODE_FULL:
        rule.mode = scheme::UpdateMode::kFull;
        break;
      case v1::UPDATE_MODE_CHANNELS:
        rule.mode = scheme::UpdateMode::kChannels;
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "scheme rule ", i, " (tensor pattern '", r.pattern(), "'): mode ",
            r.mode() == v1::UPDATE_MODE_UNSPECIFIED ? std::string("is unset")
                                                    : absl::StrCat(r.mode(), " is unknown"),
            "; use UPDATE_MODE_FROZEN, UPDATE_MODE_FULL or UPDATE_MODE_CHANNELS"));
    }
    out.rules.push_back(std::move(rule));
  }
  return out;
}

v1::UpdateScheme SchemeToProto(const scheme::UpdateScheme& scheme) {
  v1::UpdateScheme out;
  out.set_name(scheme.name);
  for (const scheme::Rule& rule : scheme.rules) {
    v1::UpdateRule* r = out.add_rules();
    r->set_pattern(rule.pattern);
    switch (rule.mode) {
      case scheme::UpdateMode::kFrozen:
        r->set_mode(v1::UPDATE_MODE_FROZEN);
        break;
      case scheme::UpdateMode::kFull:
        r->set_mode(v1::UPDATE_MODE_FULL);
        break;
      case scheme::UpdateMode::kChannels:
        r->set_mode(v1::UPDATE_MODE_CHANNELS);
        break;
    }
    if (rule.channel_fraction != 0.0) r->set_channel_fraction(rule.channel_fraction);
  }
  return out;
}

absl::StatusOr<scheme::UpdateScheme> ParseSchemeText(absl::string_view text) {
  if (text.size() > kMaxSchemeTextBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheme text is ", text.size(), " bytes, more than ", kMaxSchemeTextBytes));
  }
  google::protobuf::TextFormat::Parser parser;
  FirstError errors;
  parser.RecordErrorsTo(&errors);
  v1::UpdateScheme proto;
  if (!parser.ParseFromString(std::string(text), &proto)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheme text: ", errors.error().empty() ? "does not parse" : errors.error()));
  }
  return SchemeFromProto(proto);
}

std::string SchemeToText(const scheme::UpdateScheme& scheme) {
  std::string out;
  google::protobuf::TextFormat::PrintToString(SchemeToProto(scheme), &out);
  return out;
}

}  // namespace fleettune::engine::plan
