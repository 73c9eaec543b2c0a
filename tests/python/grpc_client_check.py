#!/usr/bin/python3
"""Drives a real fleettune-coordinator from Python's grpcio, using only the .proto files.

Proves the wire API is usable from another language: the stubs are generated
here, at run time, with Debian's protoc and grpc_python_plugin from
proto/fleettune/v1/*.proto, and nothing of the C++ code is imported.

    tests/python/grpc_client_check.py --coordinator bazel-bin/server/fleettune-coordinator \
        --proto_root .

Exits 0 when every check passes; prints what failed otherwise. Run by
//tests/python:grpc_client_check (Debian's python3-grpcio and python3-protobuf).
"""

import argparse
import glob
import os
import socket
import subprocess
import sys
import tempfile
import time

OPERATOR = "operator-token-for-python-check"
ENROLL = "enrollment-token-for-python-check"


def generate_stubs(proto_root, out_dir):
    protos = sorted(glob.glob(os.path.join(proto_root, "proto/fleettune/v1/*.proto")))
    if not protos:
        sys.exit("no .proto files under %s" % proto_root)
    subprocess.run(["/usr/bin/protoc", "-I", proto_root, "--python_out", out_dir,
                    "--grpc_out", out_dir,
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin"] + protos,
                   check=True)
    sys.path.insert(0, out_dir)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--proto_root", required=True)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="fleettune-pycheck-", dir=os.environ.get("TEST_TMPDIR"))
    generate_stubs(args.proto_root, work)
    import grpc  # noqa: E402  (after the stubs exist)
    from proto.fleettune.v1 import agent_service_pb2 as agent_pb
    from proto.fleettune.v1 import agent_service_pb2_grpc as agent_grpc
    from proto.fleettune.v1 import fleet_service_pb2 as fleet_pb
    from proto.fleettune.v1 import fleet_service_pb2_grpc as fleet_grpc
    from proto.fleettune.v1 import job_pb2

    for name, token in (("operator.tokens", OPERATOR), ("enroll.tokens", ENROLL)):
        with open(os.path.join(work, name), "w") as f:
            f.write(token + "\n")
    port = free_port()
    server = subprocess.Popen([
        args.coordinator, "--listen=127.0.0.1:%d" % port, "--metrics_listen=",
        "--db=%s" % os.path.join(work, "coordinator.db"),
        "--operator_tokens=%s" % os.path.join(work, "operator.tokens"),
        "--enrollment_tokens=%s" % os.path.join(work, "enroll.tokens")])
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print("FAIL:", what)

    try:
        channel = grpc.insecure_channel("127.0.0.1:%d" % port)
        grpc.channel_ready_future(channel).result(timeout=30)
        fleet = fleet_grpc.FleetServiceStub(channel)
        agent = agent_grpc.AgentServiceStub(channel)
        op = [("authorization", "Bearer " + OPERATOR)]

        # Unauthenticated calls are refused.
        try:
            fleet.ListJobs(fleet_pb.ListJobsRequest())
            check(False, "ListJobs without a token succeeded")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAUTHENTICATED, "no token -> %s" % e.code())

        classes = fleet.ListDeviceClasses(fleet_pb.ListDeviceClassesRequest(), metadata=op)
        names = [c.name for c in classes.classes]
        check("x86-avx2" in names and "rpi4" in names, "classes: %s" % names)

        spec = job_pb2.JobSpec(
            name="python-check", task="classification", dataset="digits",
            base_model=job_pb2.ModelSpec(architecture="mlp", layer_sizes=[64, 32, 10]),
            hyper_parameters=job_pb2.HyperParameters(
                optimizer=job_pb2.OPTIMIZER_KIND_SGD, learning_rate=0.05, momentum=0.9,
                epochs=1, batch_size=16),
            scheme=job_pb2.SchemeSpec(fit_class_budget=True),
            targets=[job_pb2.ClassTarget(device_class="x86-avx2", devices=1)])
        job = fleet.CreateJob(fleet_pb.CreateJobRequest(spec=spec), metadata=op).job
        check(job.state == job_pb2.JOB_STATE_PENDING, "new job state %d" % job.state)

        try:
            bad = job_pb2.JobSpec()
            bad.CopyFrom(spec)
            bad.targets[0].device_class = "unknown-class"
            fleet.CreateJob(fleet_pb.CreateJobRequest(spec=bad), metadata=op)
            check(False, "unknown class accepted")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, "unknown class -> %s" % e.code())

        reg = agent.Register(agent_pb.RegisterRequest(profile=__import__(
            "proto.fleettune.v1.device_pb2", fromlist=["DeviceProfile"]).DeviceProfile(
                arch="x86_64", isa_features=["avx2", "fma"], cores=2, memory_bytes=8 << 30)),
            metadata=[("authorization", "Bearer " + ENROLL)])
        dev = [("authorization", "Bearer " + reg.device_token)]
        hb = agent.Heartbeat(agent_pb.HeartbeatRequest(device_id=reg.device_id), metadata=dev)
        check(hb.HasField("assignment"), "heartbeat gave no assignment")
        a = hb.assignment
        data = b"".join(c.data for c in agent.FetchBlob(
            agent_pb.FetchBlobRequest(digest=a.plan_digest), metadata=dev))
        import hashlib
        check(hashlib.sha256(data).hexdigest() == a.plan_digest, "plan digest mismatch")
        check(len(data) == a.plan_bytes, "plan size %d != %d" % (len(data), a.plan_bytes))

        report = job_pb2.MetricsReport(assignment_id=a.assignment_id, sequence=1,
                                       ms_per_step=1.0, accuracy_before=0.5,
                                       accuracy_after=0.8, speedup_vs_dense=1.0,
                                       memory_saving_vs_dense=1.0, dense_fits=True)
        r = agent.ReportMetrics(agent_pb.ReportMetricsRequest(
            device_id=reg.device_id, report=report), metadata=dev)
        check(r.accepted, "report not accepted")
        report.sequence = 2
        agent.CompleteAssignment(agent_pb.CompleteAssignmentRequest(
            device_id=reg.device_id, final_report=report), metadata=dev)
        done = fleet.GetJob(fleet_pb.GetJobRequest(job_id=job.job_id), metadata=op).job
        check(done.state == job_pb2.JOB_STATE_SUCCEEDED, "final state %d" % done.state)
        check(abs(done.progress[0].accuracy_after - 0.8) < 1e-9, "accuracy not aggregated")

        try:
            fleet.GetJob(fleet_pb.GetJobRequest(job_id="job-missing"), metadata=op)
            check(False, "unknown job found")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, "unknown job -> %s" % e.code())
    finally:
        server.terminate()
        try:
            rc = server.wait(timeout=20)
            check(rc == 0, "coordinator exited with %s" % rc)
        except subprocess.TimeoutExpired:
            server.kill()
            check(False, "coordinator did not stop on SIGTERM")

    if failures:
        print("%d checks failed" % len(failures))
        return 1
    print("python grpcio client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
