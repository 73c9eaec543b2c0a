#include "agent/probe/probe.h"

#include <cpuinfo.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::agent {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Not;

// A fake root with firmware and device files, as ProbeOptions::root expects.
class FakeRoot {
 public:
  explicit FakeRoot(const std::string& name) {
    const char* tmp = std::getenv("TEST_TMPDIR");
    root_ = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", name, "_", getpid());
  }
  const std::string& path() const { return root_; }

  void Write(const std::string& relative, const std::string& bytes) {
    const std::string full = root_ + relative;
    for (size_t slash = full.find('/', 1); slash != std::string::npos;
         slash = full.find('/', slash + 1)) {
      mkdir(full.substr(0, slash).c_str(), 0755);
    }
    std::ofstream(full, std::ios::binary) << bytes;
  }

 private:
  std::string root_;
};

TEST(ProbeDevice, DescribesThisMachine) {
  ASSERT_OK_AND_ASSIGN(v1::DeviceProfile profile, ProbeDevice());
  GTEST_LOG_(INFO) << "probed: " << profile.ShortDebugString();
  EXPECT_GT(profile.memory_bytes(), 0);
  EXPECT_GE(profile.cores(), 1);
  EXPECT_TRUE(profile.class_override().empty());
#if defined(__x86_64__)
  EXPECT_EQ(profile.arch(), "x86_64");
  ASSERT_TRUE(cpuinfo_initialize());
  if (cpuinfo_has_x86_avx2()) {
    EXPECT_THAT(profile.isa_features(), Contains("avx2"));
  } else {
    GTEST_LOG_(INFO) << "this CPU has no AVX2; skipping that check";
  }
  if (cpuinfo_has_x86_fma3()) {
    EXPECT_THAT(profile.isa_features(), Contains("fma"));
  }
  // The name the x86-avx512 device class requires (server/compiler/device_classes.cc).
  if (cpuinfo_has_x86_avx512f()) {
    EXPECT_THAT(profile.isa_features(), Contains("avx512f"));
  } else {
    EXPECT_THAT(profile.isa_features(), Not(Contains("avx512f")));
  }
  EXPECT_THAT(profile.isa_features(), Not(Contains("neon")));
#elif defined(__aarch64__)
  EXPECT_EQ(profile.arch(), "aarch64");
  EXPECT_THAT(profile.isa_features(), Contains("asimd"));
#endif
  for (const std::string& feature : profile.isa_features()) {
    EXPECT_EQ(feature, absl::AsciiStrToLower(feature));
  }
}

TEST(ProbeDevice, EmptyRootGivesNoBoardOrAccelerator) {
  FakeRoot root("empty");
  root.Write("/placeholder", "");
  ASSERT_OK_AND_ASSIGN(v1::DeviceProfile profile, ProbeDevice({root.path()}));
  EXPECT_THAT(profile.board(), IsEmpty());
  EXPECT_THAT(profile.accelerator(), IsEmpty());
}

TEST(ProbeDevice, ReadsRaspberryPiDeviceTreeModel) {
  FakeRoot root("rpi");
  root.Write("/proc/device-tree/model", std::string("Raspberry Pi 4 Model B Rev 1.4\0", 31));
  root.Write("/sys/class/dmi/id/product_name", "ignored\n");
  ASSERT_OK_AND_ASSIGN(v1::DeviceProfile profile, ProbeDevice({root.path()}));
  EXPECT_EQ(profile.board(), "Raspberry Pi 4 Model B Rev 1.4");
  EXPECT_THAT(profile.accelerator(), IsEmpty());
}

TEST(ProbeDevice, FallsBackToDmiProductName) {
  FakeRoot root("dmi");
  root.Write("/sys/class/dmi/id/product_name", "ThinkCentre M75q Gen 2\n");
  ASSERT_OK_AND_ASSIGN(v1::DeviceProfile profile, ProbeDevice({root.path()}));
  EXPECT_EQ(profile.board(), "ThinkCentre M75q Gen 2");
}

TEST(ProbeDevice, DropsFirmwarePlaceholdersAndControlCharacters) {
  FakeRoot placeholder("oem");
  placeholder.Write("/sys/class/dmi/id/product_name", "To Be Filled By O.E.M.\n");
  ASSERT_OK_AND_ASSIGN(v1::DeviceProfile profile, ProbeDevice({placeholder.path()}));
  EXPECT_THAT(profile.board(), IsEmpty());

  FakeRoot garbage("garbage");
  garbage.Write("/sys/class/dmi/id/product_name", "Box\x1b[31m" + std::string(300, 'x'));
  ASSERT_OK_AND_ASSIGN(profile, ProbeDevice({garbage.path()}));
  EXPECT_EQ(profile.board().size(), 128u);
  EXPECT_EQ(profile.board().substr(0, 9), "Box [31mx");
}

TEST(ProbeDevice, NamesJetsonGpuByFamily) {
  FakeRoot root("jetson");
  root.Write("/dev/nvhost-ctrl-gpu", "");
  root.Write("/proc/device-tree/model", std::string("NVIDIA Jetson Orin Nano Developer Kit\0", 38));
  ASSERT_OK_AND_ASSIGN(v1::DeviceProfile profile, ProbeDevice({root.path()}));
  EXPECT_EQ(profile.accelerator(), "cuda:orin");
  EXPECT_EQ(profile.board(), "NVIDIA Jetson Orin Nano Developer Kit");
}

TEST(ProbeDevice, NamesDiscreteGpuFromDriverInformation) {
  FakeRoot root("dgpu");
  root.Write("/dev/nvidia0", "");
  root.Write("/proc/driver/nvidia/gpus/0000:01:00.0/information",
             "Model: \t\t NVIDIA GeForce RTX 4090\nIRQ:   130\n");
  ASSERT_OK_AND_ASSIGN(v1::DeviceProfile profile, ProbeDevice({root.path()}));
  EXPECT_EQ(profile.accelerator(), "cuda:geforce-rtx-4090");
}

TEST(ProbeDevice, GpuDeviceWithoutDriverInformationIsPlainCuda) {
  FakeRoot root("cuda");
  root.Write("/dev/nvidia0", "");
  ASSERT_OK_AND_ASSIGN(v1::DeviceProfile profile, ProbeDevice({root.path()}));
  EXPECT_EQ(profile.accelerator(), "cuda");
}

v1::DeviceProfile Probed() {
  v1::DeviceProfile p;
  p.set_arch("x86_64");
  p.add_isa_features("avx2");
  p.add_isa_features("fma");
  p.set_cores(8);
  p.set_memory_bytes(int64_t{16} << 30);
  p.set_accelerator("cuda:geforce-rtx-4090");
  p.set_board("ThinkCentre");
  return p;
}

TEST(ApplyOverride, EmptyOverrideKeepsProbedProfile) {
  const v1::DeviceProfile result = ApplyOverride(Probed(), v1::DeviceProfile());
  EXPECT_EQ(result.SerializeAsString(), Probed().SerializeAsString());
}

TEST(ApplyOverride, SetFieldsReplaceProbedOnes) {
  v1::DeviceProfile o;
  o.set_arch("aarch64");
  o.add_isa_features("asimd");
  o.add_isa_features("asimddp");
  o.set_cores(4);
  o.set_memory_bytes(int64_t{4} << 30);
  o.set_accelerator("cuda:orin");
  o.set_board("Raspberry Pi 5");
  o.set_class_override("rpi5");
  const v1::DeviceProfile result = ApplyOverride(Probed(), o);
  EXPECT_EQ(result.SerializeAsString(), o.SerializeAsString());
}

TEST(ApplyOverride, PartialOverrideReplacesOnlyItsFields) {
  v1::DeviceProfile o;
  o.set_class_override("rpi4");
  o.set_memory_bytes(int64_t{4} << 30);
  o.set_cores(-3);  // not above zero: ignored
  const v1::DeviceProfile result = ApplyOverride(Probed(), o);
  EXPECT_EQ(result.class_override(), "rpi4");
  EXPECT_EQ(result.memory_bytes(), int64_t{4} << 30);
  EXPECT_EQ(result.arch(), "x86_64");
  EXPECT_THAT(result.isa_features(), ElementsAre("avx2", "fma"));
  EXPECT_EQ(result.cores(), 8);
  EXPECT_EQ(result.accelerator(), "cuda:geforce-rtx-4090");
  EXPECT_EQ(result.board(), "ThinkCentre");
}

}  // namespace
}  // namespace fleettune::agent
