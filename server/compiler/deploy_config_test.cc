// deploy/device_classes.textproto is the built-in device classes written out as a config; this
// keeps the two from drifting apart.
#include <string>

#include "engine/base/status_matchers.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "server/compiler/device_classes.h"

namespace fleettune::server {
namespace {

TEST(DeviceClassRegistry, DeployConfigEqualsDefaults) {
  ASSERT_OK_AND_ASSIGN(DeviceClassRegistry deployed,
                       DeviceClassRegistry::FromFile("deploy/device_classes.textproto"));
  const DeviceClassRegistry defaults = DeviceClassRegistry::Defaults();
  ASSERT_EQ(deployed.classes().size(), defaults.classes().size());
  for (size_t i = 0; i < defaults.classes().size(); ++i) {
    std::string diff;
    google::protobuf::util::MessageDifferencer differencer;
    differencer.ReportDifferencesToString(&diff);
    EXPECT_TRUE(differencer.Compare(defaults.classes()[i], deployed.classes()[i]))
        << defaults.classes()[i].name() << ": " << diff;
  }
}

}  // namespace
}  // namespace fleettune::server
