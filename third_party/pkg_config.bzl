"""Bazel targets for system libraries, derived from pkg-config at fetch time.

`pkg_config_repository(name = "system_libs")` creates `@system_libs//:<lib>` for
each entry of _LIBRARIES below. Flags come from the installed `.pc` files, so a
library upgrade changes them without anyone editing a list of `-l` options.

Non-default include directories are symlinked into the repository so headers
stay inside Bazel's view; `-D` flags become `defines`; everything from
`--libs` becomes `linkopts`.
"""

# target name -> pkg-config modules. The absl_* modules are listed explicitly
# because gRPC's .pc file does not pull in every absl component we call.
_LIBRARIES = {
    "absl": [
        "absl_status",
        "absl_statusor",
        "absl_strings",
        "absl_str_format",
        "absl_synchronization",
        "absl_time",
        "absl_hash",
        "absl_flat_hash_map",
        "absl_flat_hash_set",
        "absl_random_random",
        "absl_span",
        "absl_cleanup",
    ],
    "absl_flags": ["absl_flags", "absl_flags_parse", "absl_flags_usage"],
    "grpcpp": ["grpc++"],
    "protobuf": ["protobuf"],
    "openssl": ["openssl"],
    "prometheus": ["prometheus-cpp-pull", "prometheus-cpp-core"],
    "gtest": ["gtest"],
    "gmock": ["gmock", "gtest"],
    "gtest_main": ["gmock", "gtest_main"],
    "openblas": ["openblas"],
    "zlib": ["zlib"],
    "sqlite3": ["sqlite3"],
    "nlohmann_json": ["nlohmann_json"],
    "png": ["libpng"],
    "cairo": ["cairo"],
    "cpuinfo": ["libcpuinfo"],
}

# Libraries whose Debian -dev package ships no .pc file (only CMake config):
# target name -> link flags. Keep this list short.
_WITHOUT_PKG_CONFIG = {
    # libdnnl-dev 2.6 installs lib/cmake/dnnl but no dnnl.pc.
    "dnnl": ["-ldnnl"],
}

def _pkg_config(ctx, args):
    result = ctx.execute(["pkg-config"] + args)
    if result.return_code != 0:
        fail("pkg-config %s failed: %s\nInstall the missing -dev package (see tools/setup.sh)." %
             (" ".join(args), result.stderr))
    return [f for f in result.stdout.strip().split(" ") if f]

def _impl(ctx):
    build = ['package(default_visibility = ["//visibility:public"])', ""]
    linked_dirs = {}
    for name, modules in _LIBRARIES.items():
        defines = []
        includes = []
        hdr_globs = []
        for flag in _pkg_config(ctx, ["--cflags"] + modules):
            if flag.startswith("-D"):
                if flag[2:] not in defines:
                    defines.append(flag[2:])
            elif flag.startswith("-I"):
                path = flag[2:].rstrip("/")
                if path not in linked_dirs:
                    linked_dirs[path] = "include_%d" % len(linked_dirs)
                    ctx.symlink(path, linked_dirs[path])
                includes.append(linked_dirs[path])
                hdr_globs.append(linked_dirs[path] + "/**")
        linkopts = _pkg_config(ctx, ["--libs"] + modules)
        build.append("cc_library(")
        build.append("    name = %r," % name)
        build.append("    hdrs = glob(%r)," % hdr_globs)
        build.append("    includes = %r," % includes)
        build.append("    defines = %r," % defines)
        build.append("    linkopts = %r," % linkopts)
        build.append(")")
        build.append("")
    for name, linkopts in _WITHOUT_PKG_CONFIG.items():
        build.append("cc_library(name = %r, linkopts = %r)" % (name, linkopts))
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    ctx.file("BUILD", "\n".join(build))

pkg_config_repository = repository_rule(
    implementation = _impl,
    local = True,
    environ = ["PKG_CONFIG_PATH"],
)
