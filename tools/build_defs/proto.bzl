"""C++ (and optionally gRPC) code generation with the system protoc.

Bazel 4.2.3 offline has no working rules_proto, so this macro runs Debian's
/usr/bin/protoc and grpc_cpp_plugin in a genrule and wraps the output in a
cc_library.

    fleettune_cc_proto(
        name = "plan_cc_proto",
        srcs = ["plan.proto"],
        deps = [":tensor_cc_proto"],  # other fleettune_cc_proto targets
        grpc = False,
    )

Import paths are relative to the workspace root, e.g.
`import "proto/fleettune/v1/tensor.proto";`.
"""

_PROTOC = "/usr/bin/protoc"
_GRPC_PLUGIN = "/usr/bin/grpc_cpp_plugin"

def fleettune_cc_proto(name, srcs, deps = [], grpc = False, visibility = None):
    """Generates <name> (a cc_library) and <name>_files (the .proto sources, transitively)."""
    stems = [s[:-len(".proto")] for s in srcs]
    outs = []
    for stem in stems:
        outs += [stem + ".pb.h", stem + ".pb.cc"]
        if grpc:
            outs += [stem + ".grpc.pb.h", stem + ".grpc.pb.cc"]

    native.filegroup(
        name = name + "_files",
        srcs = srcs + [d + "_files" for d in deps],
        visibility = visibility,
    )

    grpc_flags = ""
    if grpc:
        grpc_flags = "--grpc_out=$(GENDIR) --plugin=protoc-gen-grpc=" + _GRPC_PLUGIN
    native.genrule(
        name = name + "_gen",
        srcs = srcs + [d + "_files" for d in deps],
        outs = outs,
        cmd = " ".join([
            _PROTOC,
            "-I.",
            "--cpp_out=$(GENDIR)",
            grpc_flags,
        ] + ["$(location %s)" % s for s in srcs]),
        message = "protoc " + name,
    )

    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        deps = deps + ["@system_libs//:protobuf"] + (["@system_libs//:grpcpp"] if grpc else []),
        visibility = visibility,
    )
