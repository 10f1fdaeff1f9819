#!/usr/bin/env python3
"""The driver of scripts/bench: lunlock against tgt on one machine, in one run (standard library only).

Method, and why:
- One backing file of 1 GiB, filled from /dev/urandom and checked to have no holes (SEEK_HOLE at its end): an
  O_DIRECT read of a hole never touches the disk, and a store that skips zero blocks would be flattered. Both
  targets serve this same file, one at a time, so they read the same bytes from the same place on the disk.
- Every round starts the target fresh and stops it afterwards, so the page cache state is set explicitly before
  the round: page-cached workloads read the whole file first (as `cat FILE > /dev/null`), O_DIRECT workloads drop
  the page cache (`echo 3 > /proc/sys/vm/drop_caches`). `sync` first, so one round's dirty pages are not written
  back during the next.
- Rounds alternate lunlock, tgt, lunlock, tgt, ... per workload, so slow drift on this shared 2-core machine (other
  builds) falls on both targets alike; the report gives medians over rounds and every round's value.
- Reads go through libiscsi's iscsi-perf (an initiator neither target wrote); writes, QD1 latency, heartbeats and
  COMPARE AND WRITE go through `lunlock bench` (iscsi-perf only reads and reports no latency), against both targets
  where tgt can do the workload. tgt has no COMPARE AND WRITE, so those rows are lunlock's only.
- Resource use is read from /proc for the target's process: CPU time (utime + stime of all its threads, from
  /proc/PID/stat) over the round divided by the I/Os done in it, and the peak RSS (VmHWM of /proc/PID/status)
  just before it stops. The window includes login, so CPU per I/O is a slight overestimate for both targets.
- Limits measured in the same run: fio with io_uring and O_DIRECT on the backing file (what the disk gives with no
  iSCSI in the way) and iperf3 over loopback (what TCP on this machine gives).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUNLOCK = os.path.join(ROOT, "target", "release", "lunlock")
RESULTS_DIR = os.path.join(ROOT, "bench", "results")

LUN_BYTES = 1 << 30
BLOCK_BYTES = 512  # both targets' default logical block size; iscsi-perf -b counts these
LUNLOCK_IQN = "iqn.2026-11.io.lunlock:bench"
TGT_IQN = "iqn.2026-11.io.lunlock:bench-tgt"
TGT_LUN = 1  # tgt's LUN 0 is its controller
TGT_SOCKET_DIR = "/var/run/tgtd"
# 1,024 heartbeat sessions plus the background load's session: above the daemon's default of 1,024 connections.
MAX_CONNECTIONS = 4096
HEARTBEAT_SESSIONS = 1024
IDLE_SESSION_COUNTS = (64, 1024)
# An idle session's heartbeat interval: with a 10 s hold, a session sends its one CAW only if its slot in the
# interval falls in the first 10 s, so about 1.7 % of them send one command and the rest send nothing.
IDLE_INTERVAL_MS = 600_000
IDLE_HOLD_SECONDS = 10
STOP_TIMEOUT_SECONDS = 10
START_TIMEOUT_SECONDS = 20
IPERF_SECONDS = 5
MIB = 1 << 20


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------------- processes


class Processes:
    """Every process this driver starts, so all are stopped whatever happens; also listed in WORKDIR/pids for the
    wrapper's trap, which kills leftovers if this driver itself is killed."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.running = []

    def start(self, argv, log_name, stdout=None):
        log_path = os.path.join(self.workdir, log_name)
        err = open(log_path, "ab")
        process = subprocess.Popen(argv, stdout=stdout if stdout is not None else err, stderr=err)
        process.log_path = log_path
        process.log_file = err
        self.running.append(process)
        with open(os.path.join(self.workdir, "pids"), "a") as pids:
            pids.write(f"{process.pid} {os.path.basename(argv[0])[:15]}\n")
        return process

    def wait(self, process, timeout):
        # Interrupted (SIGTERM, Ctrl-C), the process stays registered, so stop_all still stops it.
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(process, signal.SIGKILL)
            raise BenchError(f"{process.args[0]} did not finish within {timeout:.0f} s; see {process.log_path}")
        self.forget(process)
        return status

    def stop(self, process, sig=signal.SIGTERM):
        """Signals and reaps; SIGKILL after STOP_TIMEOUT_SECONDS."""
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.forget(process)
        return process.returncode

    def forget(self, process):
        if process in self.running:
            self.running.remove(process)
            process.log_file.close()

    def stop_all(self, keep=None):
        for process in list(self.running):
            if process is not keep:
                self.stop(process)


def run_quiet(argv, what):
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"{what}: {' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process):
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{process.args[0]} exited {process.returncode} at start; see {process.log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {START_TIMEOUT_SECONDS} s")


def cpu_seconds(pid):
    """utime + stime of the whole thread group (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


# ---------------------------------------------------------------------------------------------------- the backing file


def create_backing_file(path):
    """1 GiB of random bytes, every block allocated."""
    with open("/dev/urandom", "rb") as source, open(path, "wb") as out:
        for _ in range(LUN_BYTES // (4 * MIB)):
            out.write(source.read(4 * MIB))
        out.flush()
        os.fsync(out.fileno())
    check_no_holes(path)


def check_no_holes(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        first_hole = os.lseek(fd, 0, os.SEEK_HOLE)
    finally:
        os.close(fd)
    if size != LUN_BYTES or first_hole != size:
        raise BenchError(f"{path}: size {size}, first hole at {first_hole}: the file must be {LUN_BYTES} bytes, no holes")
    return True


def prepare_cache(mode, path):
    os.sync()
    if mode == "cached":
        with open(path, "rb", buffering=0) as f:
            while f.read(4 * MIB):
                pass
    else:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


# ---------------------------------------------------------------------------------------------------- targets


class Lunlock:
    name = "lunlock"

    def __init__(self, ctx, direct):
        self.ctx = ctx
        self.port = free_port()
        self.config = os.path.join(ctx.workdir, f"lunlock-{'direct' if direct else 'buffered'}.toml")
        with open(self.config, "w") as f:
            f.write(
                f'data_dir = "{ctx.workdir}/lunlock-data"\n'
                f'listen = ["127.0.0.1:{self.port}"]\n'
                f"max_connections = {MAX_CONNECTIONS}\n"
                f"[[target]]\n"
                f'name = "{LUNLOCK_IQN}"\n'
                f"[[target.lun]]\n"
                f"id = 0\n"
                f'path = "{ctx.backing}"\n'
                f"direct_io = {'true' if direct else 'false'}\n"
            )
        self.url = f"iscsi://127.0.0.1:{self.port}/{LUNLOCK_IQN}/0"
        self.process = None
        self.lock_stats_path = None

    def start(self, label):
        argv = [LUNLOCK, "serve", "--admin", "127.0.0.1:0", "--config", self.config]
        if self.ctx.lock_stats_supported:
            self.lock_stats_path = os.path.join(self.ctx.workdir, f"lock-stats-{label}.json")
            argv += ["--lock-stats", self.lock_stats_path]
        self.process = self.ctx.procs.start(argv, "lunlock-serve.log")
        wait_for_port(self.port, self.process)
        return self.process.pid

    def stop(self):
        """SIGTERM (the daemon writes --lock-stats at shutdown); returns the lock statistics, or None."""
        self.ctx.procs.stop(self.process)
        self.process = None
        if not self.lock_stats_path:
            return None
        try:
            with open(self.lock_stats_path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            log(f"lock statistics {self.lock_stats_path} unreadable: {e}")
            return None


class Tgt:
    name = "tgt"

    def __init__(self, ctx, direct):
        self.ctx = ctx
        self.direct = direct
        self.port = free_port()
        self.url = f"iscsi://127.0.0.1:{self.port}/{TGT_IQN}/{TGT_LUN}"
        self.process = None
        self.control = ctx.tgt_control

    def tgtadm(self, *args):
        return run_quiet(["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args], "tgtadm")

    def start(self, label):
        argv = ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal=127.0.0.1:{self.port}"]
        self.process = self.ctx.procs.start(argv, "tgtd.log")
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:  # tgtd takes a moment before its control socket answers
            if self.process.poll() is not None:
                raise BenchError(f"tgtd exited {self.process.returncode} at start; see {self.process.log_path}")
            try:
                self.tgtadm("--op", "show", "--mode", "target")
                break
            except BenchError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", TGT_IQN)
        lun = ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(TGT_LUN)]
        lun += ["--backing-store", self.ctx.backing]
        if self.direct:
            lun += ["--bsoflags", "direct"]
        self.tgtadm(*lun)
        self.tgtadm("--op", "bind", "--mode", "target", "--tid", "1", "--initiator-address", "ALL")
        wait_for_port(self.port, self.process)
        return self.process.pid

    def stop(self):
        # tgtd ignores SIGTERM while it has targets: delete them, then the system, and it exits by itself.
        try:
            self.tgtadm("--op", "delete", "--mode", "target", "--tid", "1", "--force")
            run_quiet(["tgtadm", "-C", str(self.control), "--op", "delete", "--mode", "system"], "tgtadm")
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except (BenchError, subprocess.TimeoutExpired) as e:
            log(f"tgtd did not shut down cleanly ({e}); killing it")
        self.ctx.procs.stop(self.process, signal.SIGKILL)
        self.process = None
        # tgtd leaves its control socket and lock file behind; they are ours, and the next round makes them anew.
        for leftover in (f"socket.{self.control}", f"socket.{self.control}.lock"):
            try:
                os.unlink(os.path.join(TGT_SOCKET_DIR, leftover))
            except FileNotFoundError:
                pass
        return None


def free_tgt_control_number():
    """tgtadm reaches tgtd through /var/run/tgtd/socket.N: a number no other tgtd uses keeps us off theirs."""
    number = 4000 + os.getpid() % 20000
    while os.path.exists(os.path.join(TGT_SOCKET_DIR, f"socket.{number}")):
        number += 1
    return number


# ---------------------------------------------------------------------------------------------------- clients


def iscsi_perf(ctx, url, blocks, random, seconds):
    argv = ["iscsi-perf", "-m", "32", "-b", str(blocks)] + (["-r"] if random else []) + ["-t", str(seconds), url]
    out_path = os.path.join(ctx.workdir, "iscsi-perf.out")
    with open(out_path, "wb") as out:
        process = ctx.procs.start(argv, "iscsi-perf.log", stdout=out)
        status = ctx.procs.wait(process, seconds + 60)
    with open(out_path, errors="replace") as f:
        text = f.read()
    # Progress lines end in \r; the last "iops average N" is the whole run's.
    averages = re.findall(r"iops average (\d+)", text)
    if status != 0 or not averages or "finished." not in text:
        raise BenchError(f"iscsi-perf against {url} exited {status}: {text[-400:]!r}")
    iops = int(averages[-1])
    return {
        "iops": iops,
        "mbps": round(iops * blocks * BLOCK_BYTES / 1e6, 1),
        "ios": iops * seconds,
    }


def lunlock_bench(ctx, url, args, seconds, timeout):
    argv = [LUNLOCK, "bench", url, "--seconds", str(seconds), "--json", *args]
    process = ctx.procs.start(argv, "lunlock-bench.log", stdout=subprocess.PIPE)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        ctx.procs.stop(process, signal.SIGKILL)
        raise BenchError(f"lunlock bench {' '.join(args)} did not finish within {timeout} s")
    ctx.procs.forget(process)
    try:
        report = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"lunlock bench {' '.join(args)} exited {process.returncode} with no JSON; see {process.log_path}")
    if report["errors"]:
        # Counted and shown in the report rather than ending a 12-minute run.
        log(f"  {report['errors']} error(s): {report['first_error']}")
    return report


# ---------------------------------------------------------------------------------------------------- workloads

# Each workload: how it is run, its cache state, which targets, and the numbers kept from a round.
WORKLOADS = [
    {"id": "randread-4k-qd32-cached", "title": "4K random read QD32, page-cached", "cache": "cached",
     "tool": "iscsi-perf", "blocks": 8, "random": True},
    {"id": "randread-4k-qd32-direct", "title": "4K random read QD32, O_DIRECT", "cache": "direct",
     "tool": "iscsi-perf", "blocks": 8, "random": True},
    {"id": "seqread-128k-qd32-cached", "title": "128K sequential read QD32, page-cached", "cache": "cached",
     "tool": "iscsi-perf", "blocks": 256, "random": False},
    {"id": "randwrite-4k-qd32", "title": "4K random write QD32, page-cached", "cache": "cached",
     "tool": "bench", "args": ["--workload", "randwrite", "--qd", "32"]},
    {"id": "randwrite-4k-qd1", "title": "4K random write QD1, page-cached", "cache": "cached",
     "tool": "bench", "args": ["--workload", "randwrite", "--qd", "1"]},
    {"id": "randread-4k-qd1", "title": "4K random read QD1, page-cached", "cache": "cached",
     "tool": "bench", "args": ["--workload", "randread", "--qd", "1"]},
    {"id": "randread-512-qd1-16s", "title": "512-byte random read QD1, 16 sessions, page-cached", "cache": "cached",
     "tool": "bench", "args": ["--workload", "randread", "--bs", "512", "--qd", "1", "--sessions", "16"]},
    {"id": "heartbeat-1024", "title": "heartbeat, 1,024 sessions x 1 CAW/s + 4K randread QD32", "cache": "cached",
     "tool": "bench", "lunlock_only": True,
     "args": ["--workload", "heartbeat", "--sessions", str(HEARTBEAT_SESSIONS), "--interval-ms", "1000",
              "--background-workload", "randread", "--background-sessions", "1", "--background-qd", "32"]},
    {"id": "caw-contended-16", "title": "COMPARE AND WRITE contended, 16 sessions on one block", "cache": "cached",
     "tool": "bench", "lunlock_only": True,
     "args": ["--workload", "caw-contended", "--sessions", "16", "--qd", "1", "--lba", "64"]},
]


def bench_numbers(report):
    """What a round of `lunlock bench` keeps besides the raw JSON."""
    numbers = {
        "iops": report["iops"],
        "mbps": report["mbps"],
        "ios": report["commands"],
        "p50_us": report["lat_us"]["p50"],
        "p99_us": report["lat_us"]["p99"],
        "errors": report["errors"],
    }
    if report["workload"] == "caw-contended":
        numbers["completed_per_s"] = report["completed_per_s"]
        numbers["good_per_s"] = report["good_per_s"]
    if report["workload"] == "heartbeat":
        background = report["background"] or {}
        numbers["heartbeats"] = report["heartbeats"]
        numbers["late_heartbeats"] = report["late_heartbeats"]
        numbers["max_lateness_us"] = report["max_heartbeat_lateness_us"]
        numbers["background_iops"] = background.get("iops", 0)
        numbers["errors"] += background.get("errors", 0)
        # The target's CPU served both loads.
        numbers["ios"] += background.get("commands", 0)
    return numbers


def run_round(ctx, workload, target_class, round_index):
    direct = workload["cache"] == "direct"
    target = target_class(ctx, direct)
    prepare_cache(workload["cache"], ctx.backing)
    label = f"{workload['id']}-{target.name}-{round_index}"
    pid = target.start(label)
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    try:
        if workload["tool"] == "iscsi-perf":
            numbers = iscsi_perf(ctx, target.url, workload["blocks"], workload["random"], ctx.seconds)
            raw = None
        else:
            # Logging in 1,025 sessions takes a while on a loaded machine; allow for it.
            raw = lunlock_bench(ctx, target.url, workload["args"], ctx.seconds, ctx.seconds + 180)
            numbers = bench_numbers(raw)
            # 1,025 ISIDs per heartbeat round say nothing the session count does not.
            for load in (raw, raw.get("background") or {}):
                if "isids" in load:
                    load["isids"] = f"{len(load['isids'])} ISIDs, not kept"
        cpu = cpu_seconds(pid) - cpu_before
        numbers["wall_s"] = round(time.monotonic() - started, 2)
        numbers["cpu_s"] = round(cpu, 3)
        numbers["cpu_us_per_io"] = round(cpu * 1e6 / numbers["ios"], 2) if numbers["ios"] else None
        numbers["vmhwm_kib"] = status_kib(pid, "VmHWM")
    finally:
        # A client still running means the round was interrupted: stop it first, so the target can shut down.
        ctx.procs.stop_all(keep=target.process)
        lock_stats = target.stop()
    return {"round": round_index, "target": target.name, **numbers, "lock_stats": lock_stats, "raw": raw}


def run_workloads(ctx):
    results = {}
    for workload in WORKLOADS:
        targets = [Lunlock] if workload.get("lunlock_only") else [Lunlock, Tgt]
        rounds = []
        for round_index in range(1, ctx.rounds + 1):
            for target_class in targets:  # A B A B: lunlock then tgt in every round
                row = run_round(ctx, workload, target_class, round_index)
                rounds.append(row)
                extra = ""
                if "p50_us" in row:
                    extra = f", p50 {row['p50_us']} us, p99 {row['p99_us']} us"
                log(f"{workload['id']} round {round_index} {row['target']}: {row['iops']:.0f} IOPS{extra}")
        results[workload["id"]] = {k: v for k, v in workload.items() if k in ("title", "cache", "tool", "args")}
        results[workload["id"]]["rounds"] = rounds
    return results


def run_idle_sessions(ctx):
    """RSS of lunlock holding N logged-in sessions that send (almost) nothing: `lunlock bench --workload heartbeat`
    with a 600 s interval over a 10 s hold. VmRSS is read 2 s after the last login, VmHWM (the peak, which the
    goals are judged on) just before the daemon stops."""
    rows = []
    for sessions in IDLE_SESSION_COUNTS:
        target = Lunlock(ctx, direct=False)
        prepare_cache("cached", ctx.backing)
        pid = target.start(f"idle-{sessions}")
        rss_before = status_kib(pid, "VmRSS")
        argv = [LUNLOCK, "bench", target.url, "--workload", "heartbeat", "--sessions", str(sessions),
                "--interval-ms", str(IDLE_INTERVAL_MS), "--seconds", str(IDLE_HOLD_SECONDS), "--json"]
        client = ctx.procs.start(argv, f"idle-{sessions}.log", stdout=subprocess.DEVNULL)
        try:
            # The bench announces its sessions on stderr once every one has logged in.
            deadline = time.monotonic() + 180
            while "bench: heartbeat on" not in read_text(client.log_path):
                if client.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"idle sessions: the bench did not log in {sessions} sessions; see {client.log_path}")
                time.sleep(0.1)
            time.sleep(2)
            rss_idle = status_kib(pid, "VmRSS")
            ctx.procs.wait(client, IDLE_HOLD_SECONDS + 120)
            hwm = status_kib(pid, "VmHWM")
        finally:
            ctx.procs.stop(client)
            target.stop()
        rows.append({"sessions": sessions, "vmrss_start_kib": rss_before, "vmrss_idle_kib": rss_idle,
                     "vmhwm_kib": hwm})
        log(f"idle {sessions} sessions: VmRSS {rss_idle} KiB, VmHWM {hwm} KiB")
    return rows


def fio_buffered_writes(ctx, round_index):
    """The kernel's own ceiling for the random-write workload: one thread doing nothing but 4K pwrite()s to the
    backing file, after the same warm-up as the write rounds (a sequential read, which leaves the file in large
    folios). --invalidate=0 keeps that page cache: fio would drop it otherwise and write into small new folios.
    Buffered writes to one file take its inode lock, so no target, whatever its threads, writes it faster."""
    prepare_cache("cached", ctx.backing)
    argv = ["fio", "--ioengine=psync", "--rw=randwrite", "--bs=4k", "--invalidate=0", f"--runtime={ctx.seconds}",
            "--time_based", f"--filename={ctx.backing}", "--name=w", "--output-format=json"]
    out = run_quiet(argv, "fio")
    job = json.loads(out[out.index("{"):])["jobs"][0]
    row = {"round": round_index, "iops": round(job["write"]["iops"], 1),
           "sys_percent": round(job["sys_cpu"], 1),
           "kernel_us_per_write": round(job["sys_cpu"] / 100 * 1e6 / job["write"]["iops"], 1)}
    log(f"fio buffered randwrite round {round_index}: {row['iops']:.0f} IOPS, {row['sys_percent']}% sys")
    return row


def run_limits(ctx):
    fio_rounds, iperf_rounds, write_rounds = [], [], []
    for round_index in range(1, ctx.rounds + 1):
        prepare_cache("direct", ctx.backing)
        argv = ["fio", "--ioengine=io_uring", "--direct=1", "--rw=randread", "--bs=4k", "--iodepth=32",
                f"--runtime={ctx.seconds}", "--time_based", f"--filename={ctx.backing}", "--name=x",
                "--output-format=json"]
        out = run_quiet(argv, "fio")
        job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
        fio_rounds.append({"round": round_index, "iops": round(job["iops"], 1),
                           "p50_us": job["clat_ns"]["percentile"]["50.000000"] / 1e3})
        log(f"fio round {round_index}: {job['iops']:.0f} IOPS")

        write_rounds.append(fio_buffered_writes(ctx, round_index))

        port = free_port()
        server = ctx.procs.start(["iperf3", "-s", "-1", "-p", str(port)], "iperf3-server.log")
        try:
            wait_for_port_iperf(port, server)
            out = run_quiet(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(IPERF_SECONDS), "-J"], "iperf3")
            ctx.procs.wait(server, 30)
        finally:
            ctx.procs.stop(server)
        gbps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
        iperf_rounds.append({"round": round_index, "gbit_per_s": round(gbps, 2)})
        log(f"iperf3 round {round_index}: {gbps:.1f} Gbit/s")
    return {"fio": fio_rounds, "iperf3": iperf_rounds, "fio_buffered_write": write_rounds}


def wait_for_port_iperf(port, server):
    """iperf3 -s -1 serves one client, and a probing connect would be that client: watch for its listening socket
    in /proc/net/tcp{,6} instead (state 0A is LISTEN)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"iperf3 -s exited {server.returncode}; see {server.log_path}")
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                        return
        time.sleep(0.05)
    raise BenchError(f"iperf3 -s does not listen on port {port}")


# ---------------------------------------------------------------------------------------------------- summary


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def of(results, workload, target, key):
    return [r[key] for r in results[workload]["rounds"] if r["target"] == target and r.get(key) is not None]


def write_ceiling_lines(summary):
    """How the random-write goal compares with what the kernel itself can do on this file."""
    ceiling = summary["limits"]["fio_buffered_write_iops"]
    tgt_iops = summary["randwrite-4k-qd32"]["tgt"]["iops"]
    lunlock_iops = summary["randwrite-4k-qd32"]["lunlock"]["iops"]
    return [
        f"Random writes: buffered writes to one file take its inode lock one at a time, and after a sequential read "
        f"the page cache holds the file in large folios, which ext4 walks block by block on every 4K write. One "
        f"thread doing nothing else gets {fmt(ceiling)} writes/s. 1.5x tgt would be {fmt(1.5 * tgt_iops)}/s, "
        f"{1.5 * tgt_iops / ceiling:.0%} of that ceiling, with the client on the same 2 cores; lunlock reached "
        f"{fmt(lunlock_iops)}/s ({lunlock_iops / ceiling:.0%})."
    ]


def round_trip_ceiling_lines(summary):
    """caw-contended needs two round trips per attempt (READ, then COMPARE AND WRITE): compare it with the cheapest
    round trip 16 sessions get here."""
    cheapest = summary["randread-512-qd1-16s"]["lunlock"]["iops"]
    tgt_cheapest = summary["randread-512-qd1-16s"]["tgt"]["iops"]
    attempts = summary["caw-contended-16"]["lunlock"]["completed_per_s"]
    return [
        f"COMPARE AND WRITE contended: each attempt is a READ and a COMPARE AND WRITE, two round trips. 16 QD1 "
        f"sessions reading 512 bytes from the page cache, the cheapest command, get {fmt(cheapest)} round trips/s "
        f"from lunlock (tgt {fmt(tgt_cheapest)}). 40K attempts/s would need {fmt(80_000)} round trips/s, "
        f"{80_000 / cheapest:.0%} of that; lunlock made {fmt(2 * attempts)} ({2 * attempts / cheapest:.0%})."
    ]


def summarize(results, limits, idle):
    """Medians per workload and target, ratios, and the issue's goals judged on them."""
    summary = {}
    for wid, w in results.items():
        entry = {}
        for target in ("lunlock", "tgt"):
            keys = {k for r in w["rounds"] if r["target"] == target for k in r if k not in ("raw", "lock_stats")}
            entry[target] = {k: median(of(results, wid, target, k)) for k in sorted(keys - {"round", "target"})}
            if not entry[target]:
                entry[target] = None
        if entry["tgt"]:
            entry["iops_ratio"] = entry["lunlock"]["iops"] / entry["tgt"]["iops"]
            if "p50_us" in entry["lunlock"]:
                entry["p50_ratio"] = entry["lunlock"]["p50_us"] / entry["tgt"]["p50_us"]
        summary[wid] = entry
    fio_iops = median([r["iops"] for r in limits["fio"]])
    summary["limits"] = {
        "fio_iops": fio_iops,
        "iperf3_gbit_per_s": median([r["gbit_per_s"] for r in limits["iperf3"]]),
        "fio_buffered_write_iops": median([r["iops"] for r in limits["fio_buffered_write"]]),
        "fio_buffered_write_kernel_us": median([r["kernel_us_per_write"] for r in limits["fio_buffered_write"]]),
    }

    def ratio(wid):
        return summary[wid]["iops_ratio"]

    lun = lambda wid, key: summary[wid]["lunlock"][key]  # noqa: E731
    tgt = lambda wid, key: summary[wid]["tgt"][key]  # noqa: E731
    heartbeat_late = max(of(results, "heartbeat-1024", "lunlock", "late_heartbeats"))
    idle_by = {row["sessions"]: row for row in idle}
    goals = [
        ("O_DIRECT 4K randread QD32 >= 1.5x tgt", f"{ratio('randread-4k-qd32-direct'):.2f}x",
         ratio("randread-4k-qd32-direct") >= 1.5),
        ("O_DIRECT 4K randread QD32 >= 60% of fio", f"{lun('randread-4k-qd32-direct', 'iops') / fio_iops:.0%} of fio",
         lun("randread-4k-qd32-direct", "iops") >= 0.6 * fio_iops),
        ("page-cached 4K randread QD32 >= 3x tgt", f"{ratio('randread-4k-qd32-cached'):.2f}x",
         ratio("randread-4k-qd32-cached") >= 3),
        ("4K randwrite QD32 >= 1.5x tgt", f"{ratio('randwrite-4k-qd32'):.2f}x", ratio("randwrite-4k-qd32") >= 1.5),
        ("128K seq read >= 1.5x tgt", f"{ratio('seqread-128k-qd32-cached'):.2f}x",
         ratio("seqread-128k-qd32-cached") >= 1.5),
        ("QD1 4K read p50 no worse than tgt",
         f"{lun('randread-4k-qd1', 'p50_us')} vs {tgt('randread-4k-qd1', 'p50_us')} us",
         lun("randread-4k-qd1", "p50_us") <= tgt("randread-4k-qd1", "p50_us")),
        ("QD1 4K write p50 no worse than tgt",
         f"{lun('randwrite-4k-qd1', 'p50_us')} vs {tgt('randwrite-4k-qd1', 'p50_us')} us",
         lun("randwrite-4k-qd1", "p50_us") <= tgt("randwrite-4k-qd1", "p50_us")),
        ("heartbeat CAW p99 < 2 ms", f"{lun('heartbeat-1024', 'p99_us')} us", lun("heartbeat-1024", "p99_us") < 2000),
        ("no heartbeat late by more than one interval", f"{heartbeat_late} late (worst round)", heartbeat_late == 0),
        ("caw-contended >= 40K completed/s with >= 3K GOOD/s",
         f"{lun('caw-contended-16', 'completed_per_s'):.0f}/s, GOOD {lun('caw-contended-16', 'good_per_s'):.0f}/s",
         lun("caw-contended-16", "completed_per_s") >= 40_000 and lun("caw-contended-16", "good_per_s") >= 3_000),
        ("RSS <= 64 MiB with 64 idle sessions", f"{idle_by[64]['vmhwm_kib'] / 1024:.1f} MiB peak",
         idle_by[64]["vmhwm_kib"] <= 64 * 1024),
        ("RSS <= 256 MiB with 1,024 idle sessions", f"{idle_by[1024]['vmhwm_kib'] / 1024:.1f} MiB peak",
         idle_by[1024]["vmhwm_kib"] <= 256 * 1024),
    ]
    summary["goals"] = [{"goal": g, "measured": m, "met": bool(ok)} for g, m, ok in goals]
    return summary


def lock_table(results, supported):
    """Per workload and lock: medians over lunlock's rounds (max: the largest of any round)."""
    if not supported:
        return None
    rows = []
    for wid, w in results.items():
        per_lock = {}
        for r in w["rounds"]:
            if r["target"] != "lunlock" or not r["lock_stats"]:
                continue
            for lock in r["lock_stats"].get("locks", []):
                per_lock.setdefault(lock["name"], []).append(lock)
        for name, locks in sorted(per_lock.items()):
            rows.append({
                "workload": wid, "lock": name,
                "acquisitions": median([lk["acquisitions"] for lk in locks]),
                **{q: median([lk["hold_ns"][q] for lk in locks]) for q in ("p50", "p99", "p999")},
                "max": max(lk["hold_ns"]["max"] for lk in locks),
            })
    return rows


# ---------------------------------------------------------------------------------------------------- report


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def rounds_text(results, wid, target, key, digits=0):
    return " / ".join(fmt(v, digits) for v in of(results, wid, target, key))


def markdown(doc):
    results, summary = doc["workloads"], doc["summary"]
    m = doc["machine"]
    out = [f"# lunlock vs tgt, {doc['date']}", ""]
    if doc["options"]["quick"]:
        out += ["**Quick run (`--quick`): a check of the script, not a benchmark.**", ""]
    out += [
        f"`scripts/bench` on {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}, {m['memory_gib']:.0f} GiB RAM; "
        f"tgt {m['tgt_version']}, libiscsi-bin {m['libiscsi_version']}, fio {m['fio_version']}; "
        f"lunlock {m['lunlock_commit']}. Load average at start {' '.join(m['loadavg_start'])}, at end "
        f"{' '.join(m['loadavg_end'])} "
        "(the machine is shared with other builds: expect noise).",
        "",
        f"{doc['options']['rounds']} round(s) per workload of {doc['options']['seconds']} s each, alternating lunlock, "
        "tgt, lunlock, tgt, ...; each target is started fresh for its round and stopped after it. Values are medians "
        f"over rounds; every round's value is listed and is in [{doc['date']}.json]({doc['date']}.json). "
        f"The run took {doc['duration_s'] / 60:.1f} minutes. Backing store: one 1 GiB file of random data with no "
        f"holes (SEEK_HOLE checked before: {doc['backing']['no_holes_before']}, after: "
        f"{doc['backing']['no_holes_after']}) on {doc['backing']['filesystem']}, served by both targets, one at a time.",
        "",
        f"![IOPS per workload]({doc['date']}.svg)",
        "",
        "## Throughput (medians)",
        "",
        "| workload | client | lunlock IOPS | tgt IOPS | lunlock/tgt | goal | lunlock rounds | tgt rounds |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    goals = {
        "randread-4k-qd32-cached": "≥ 3x",
        "randread-4k-qd32-direct": "≥ 1.5x, ≥ 60% of fio",
        "seqread-128k-qd32-cached": "≥ 1.5x",
        "randwrite-4k-qd32": "≥ 1.5x",
    }
    for wid, w in results.items():
        s = summary[wid]
        client = "iscsi-perf" if w["tool"] == "iscsi-perf" else "lunlock bench"
        if s["tgt"] is None:
            continue
        out.append(
            f"| {w['title']} | {client} | {fmt(s['lunlock']['iops'])} | {fmt(s['tgt']['iops'])} | "
            f"{s['iops_ratio']:.2f}x | {goals.get(wid, '')} | {rounds_text(results, wid, 'lunlock', 'iops')} | "
            f"{rounds_text(results, wid, 'tgt', 'iops')} |"
        )
    s = summary["seqread-128k-qd32-cached"]
    out += [
        "",
        f"128K sequential read: lunlock {fmt(s['lunlock']['mbps'])} MB/s, tgt {fmt(s['tgt']['mbps'])} MB/s "
        f"(10^6 bytes); iperf3 over loopback gives {summary['limits']['iperf3_gbit_per_s']:.1f} Gbit/s "
        f"= {summary['limits']['iperf3_gbit_per_s'] * 125:,.0f} MB/s.",
        "",
        "## Latency (medians of each round's percentile, lunlock bench)",
        "",
        "| workload | lunlock p50 us | tgt p50 us | lunlock/tgt p50 | lunlock p99 us | tgt p99 us | goal |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for wid in ("randread-4k-qd1", "randwrite-4k-qd1", "randwrite-4k-qd32"):
        s = summary[wid]
        goal = "p50 no worse than tgt" if wid.endswith("qd1") else ""
        out.append(
            f"| {results[wid]['title']} | {fmt(s['lunlock']['p50_us'], 1)} | {fmt(s['tgt']['p50_us'], 1)} | "
            f"{s['p50_ratio']:.2f} | {fmt(s['lunlock']['p99_us'], 1)} | {fmt(s['tgt']['p99_us'], 1)} | {goal} |"
        )
    hb, caw = summary["heartbeat-1024"]["lunlock"], summary["caw-contended-16"]["lunlock"]
    out += [
        "",
        "## COMPARE AND WRITE (lunlock only: tgt has no COMPARE AND WRITE)",
        "",
        "| workload | lunlock | tgt | goal | rounds |",
        "|---|---|---|---|---|",
        f"| {results['heartbeat-1024']['title']} | CAW p50 {fmt(hb['p50_us'], 1)} us, p99 {fmt(hb['p99_us'], 1)} us; "
        f"late heartbeats (median) {fmt(hb['late_heartbeats'])}, max lateness {fmt(hb['max_lateness_us'])} us; "
        f"background {fmt(hb['background_iops'])} IOPS | not supported | CAW p99 < 2 ms, none late by > 1 interval | "
        f"p99 {rounds_text(results, 'heartbeat-1024', 'lunlock', 'p99_us', 1)} us; late "
        f"{rounds_text(results, 'heartbeat-1024', 'lunlock', 'late_heartbeats')} |",
        f"| {results['caw-contended-16']['title']} | {fmt(caw['completed_per_s'])} completed/s, "
        f"{fmt(caw['good_per_s'])} GOOD/s | not supported | ≥ 40K completed/s, ≥ 3K GOOD/s | completed "
        f"{rounds_text(results, 'caw-contended-16', 'lunlock', 'completed_per_s')}; GOOD "
        f"{rounds_text(results, 'caw-contended-16', 'lunlock', 'good_per_s')} |",
        "",
        "CAWs carry FUA (the bench's default, as lock writes do), so every GOOD one waited for fdatasync.",
        "",
        "## Goals (issue 9)",
        "",
        "| goal | measured | status |",
        "|---|---|---|",
    ]
    for g in summary["goals"]:
        out.append(f"| {g['goal']} | {g['measured']} | {'MET' if g['met'] else '**NOT MET**'} |")
    out += [
        "",
        "## Limits in the same run",
        "",
        "| limit | median | rounds |",
        "|---|---:|---|",
        f"| fio io_uring O_DIRECT 4K randread QD32 on the backing file | {fmt(summary['limits']['fio_iops'])} IOPS | "
        f"{' / '.join(fmt(r['iops']) for r in doc['limits']['fio'])} |",
        f"| iperf3 over loopback ({IPERF_SECONDS} s) | {summary['limits']['iperf3_gbit_per_s']:.1f} Gbit/s | "
        f"{' / '.join(str(r['gbit_per_s']) for r in doc['limits']['iperf3'])} |",
        f"| fio psync 4K randwrite, one thread, on the backing file after the write rounds' warm-up | "
        f"{fmt(summary['limits']['fio_buffered_write_iops'])} IOPS, "
        f"{summary['limits']['fio_buffered_write_kernel_us']} us of kernel CPU per write | "
        f"{' / '.join(fmt(r['iops']) for r in doc['limits']['fio_buffered_write'])} |",
        "",
        f"lunlock O_DIRECT 4K randread QD32 is "
        f"{summary['randread-4k-qd32-direct']['lunlock']['iops'] / summary['limits']['fio_iops']:.0%} of fio, "
        f"tgt {summary['randread-4k-qd32-direct']['tgt']['iops'] / summary['limits']['fio_iops']:.0%}.",
        "",
        *write_ceiling_lines(summary),
        "",
        *round_trip_ceiling_lines(summary),
        "",
        "## Resources per workload (medians over rounds)",
        "",
        "Peak RSS is the target process's VmHWM at the end of its round; CPU per I/O is the target's utime + stime "
        "over the round (from login to logout) divided by the I/Os done.",
        "",
        "| workload | lunlock peak RSS MiB | tgt peak RSS MiB | lunlock CPU us/IO | tgt CPU us/IO |",
        "|---|---:|---:|---:|---:|",
    ]
    for wid, w in results.items():
        s = summary[wid]
        t = s["tgt"] or {}
        out.append(
            f"| {w['title']} | {fmt(s['lunlock']['vmhwm_kib'] / 1024, 1)} | "
            f"{fmt(t['vmhwm_kib'] / 1024, 1) if t else 'n/a'} | {fmt(s['lunlock']['cpu_us_per_io'], 2)} | "
            f"{fmt(t.get('cpu_us_per_io'), 2) if t else 'n/a'} |"
        )
    out += [
        "",
        "## lunlock with idle sessions",
        "",
        f"`lunlock bench --workload heartbeat --sessions N --interval-ms {IDLE_INTERVAL_MS} --seconds "
        f"{IDLE_HOLD_SECONDS}` holds N logged-in sessions for {IDLE_HOLD_SECONDS} s; a session sends one CAW only "
        f"if its place in the {IDLE_INTERVAL_MS // 1000} s interval falls in the hold, so about "
        f"{IDLE_HOLD_SECONDS * 1000 / IDLE_INTERVAL_MS:.1%} of them send one command and the rest none. "
        "VmRSS is read 2 s after the last login; the goal is judged on the peak (VmHWM), which includes the logins.",
        "",
        "| sessions | RSS before logins MiB | RSS idle MiB | peak RSS MiB | goal |",
        "|---:|---:|---:|---:|---|",
    ]
    for row in doc["idle_sessions"]:
        goal = "≤ 64 MiB" if row["sessions"] == 64 else "≤ 256 MiB"
        out.append(
            f"| {row['sessions']:,} | {row['vmrss_start_kib'] / 1024:.1f} | {row['vmrss_idle_kib'] / 1024:.1f} | "
            f"{row['vmhwm_kib'] / 1024:.1f} | {goal} |"
        )
    out += ["", "## Lock hold times (lunlock serve --lock-stats)", ""]
    if doc["lock_stats"] is None:
        out.append("Not available in this build: `lunlock serve --help` does not list `--lock-stats`.")
    elif not doc["lock_stats"]:
        out.append("`--lock-stats` was passed, but the daemon wrote no lock statistics.")
    else:
        out += ["Medians over lunlock's rounds (max: the largest of any round), in nanoseconds, as the daemon "
                "reports them (its histograms have log2 buckets, so the quantiles are bucket bounds).", "",
                "| workload | lock | acquisitions | p50 | p99 | p99.9 | max |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in doc["lock_stats"]:
            out.append(f"| {r['workload']} | {r['lock']} | {fmt(r['acquisitions'])} | {fmt(r['p50'])} | "
                       f"{fmt(r['p99'])} | {fmt(r['p999'])} | {fmt(r['max'])} |")
    errors = [(wid, r["target"], r["round"], r["errors"]) for wid, w in results.items() for r in w["rounds"]
              if r.get("errors")]
    out += ["", "## Notes", ""]
    if errors:
        out += [f"- Errors reported by `lunlock bench`: "
                + "; ".join(f"{w} {t} round {n}: {e}" for w, t, n, e in errors) + "."]
    out += [
        "- iscsi-perf picks random LBAs in 512-byte blocks, so its 4K random reads are mostly not 4K-aligned (for "
        "both targets alike); `lunlock bench` sends 4K-aligned commands.",
        "- Writes and QD1 latency are measured with `lunlock bench` against both targets (iscsi-perf only reads). "
        "The write rows are page-cached on both targets (buffered backing, file pre-read).",
        "- The 128K sequential read is page-cached on both targets.",
        "",
    ]
    return "\n".join(out)


# The goals, written under each row's ratio in the chart.
CHART_GOALS = {
    "randread-4k-qd32-cached": "goal >= 3x",
    "randread-4k-qd32-direct": "goal >= 1.5x, >= 60% fio",
    "seqread-128k-qd32-cached": "goal >= 1.5x",
    "randwrite-4k-qd32": "goal >= 1.5x",
    "randwrite-4k-qd1": "goal: p50 <= tgt",
    "randread-4k-qd1": "goal: p50 <= tgt",
    "caw-contended-16": "goal >= 40K/s, 3K GOOD/s",
}


def svg_chart(doc):
    """Horizontal bars per workload, lunlock and tgt (and fio where it is the limit). Each row has its own scale,
    so a 128K row is as readable as a 4K one; the numbers and the ratio are written beside the bars."""
    results, summary = doc["workloads"], doc["summary"]
    rows = []
    for wid, w in results.items():
        s = summary[wid]
        if wid == "caw-contended-16":
            bars = [("lunlock", s["lunlock"]["completed_per_s"]), ("tgt", None)]
            title = "CAW contended, 16 sessions (completed/s)"
        elif wid == "heartbeat-1024":
            bars = [("lunlock", s["lunlock"]["background_iops"]), ("tgt", None)]
            title = "randread QD32 beside 1,024 heartbeats"
        else:
            bars = [("lunlock", s["lunlock"]["iops"]), ("tgt", s["tgt"]["iops"])]
            title = w["title"]
            if wid == "randread-4k-qd32-direct":
                bars.append(("fio", summary["limits"]["fio_iops"]))
        rows.append((title, bars, s.get("iops_ratio"), CHART_GOALS.get(wid, "")))
    colors = {"lunlock": "#1f77b4", "tgt": "#ff7f0e", "fio": "#7f7f7f"}
    left, bar_area, bar_h, gap = 330, 440, 16, 22
    y = 70
    parts = []
    for title, bars, ratio, goal in rows:
        scale = max(v for _, v in bars if v) or 1
        row_top = y
        parts.append(f'<text x="{left - 10}" y="{y + bar_h}" text-anchor="end" class="label">{esc(title)}</text>')
        for name, value in bars:
            if value is None:
                parts.append(f'<text x="{left + 4}" y="{y + 12}" class="value">tgt: no COMPARE AND WRITE</text>')
            else:
                width = bar_area * value / scale
                parts.append(f'<rect x="{left}" y="{y}" width="{width:.1f}" height="{bar_h - 2}" '
                             f'fill="{colors[name]}"/>')
                parts.append(f'<text x="{left + width + 4:.1f}" y="{y + 12}" class="value">'
                             f'{name} {value:,.0f}</text>')
            y += bar_h
        if ratio is not None:
            parts.append(f'<text x="{left + bar_area + 150}" y="{row_top + 14}" class="ratio">'
                         f'{ratio:.2f}x</text>')
        if goal:
            parts.append(f'<text x="{left + bar_area + 150}" y="{row_top + 28}" class="note">{esc(goal)}</text>')
        y += gap
    height = y + 20
    width = left + bar_area + 330
    legend = "".join(
        f'<rect x="{left + i * 110}" y="38" width="12" height="12" fill="{c}"/>'
        f'<text x="{left + i * 110 + 16}" y="49" class="value">{n}</text>'
        for i, (n, c) in enumerate(colors.items()))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">\n'
        "<style>.label{font-size:12px}.value{font-size:11px}.ratio{font-size:13px;font-weight:bold}"
        ".title{font-size:15px;font-weight:bold}.note{font-size:11px;fill:#555}</style>\n"
        f'<rect width="{width}" height="{height}" fill="white"/>\n'
        f'<text x="10" y="22" class="title">IOPS per workload, lunlock vs tgt, {doc["date"]} '
        f'(medians of {doc["options"]["rounds"]} round(s))</text>\n'
        f'<text x="10" y="49" class="note">each row has its own scale; ratio lunlock/tgt at right</text>\n'
        f"{legend}\n" + "\n".join(parts) + "\n</svg>\n"
    )


def read_text(path):
    with open(path, errors="replace") as f:
        return f.read()


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def machine_info(ctx):
    def first_line(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    def package(name):
        return first_line(["dpkg-query", "-W", "-f", "${Version}", name])

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memory_kib = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": cpu,
        "memory_gib": memory_kib / MIB,
        "tgt_version": f"{first_line(['tgtd', '-V'])} (Debian {package('tgt')})",
        "libiscsi_version": package("libiscsi-bin"),
        "fio_version": first_line(["fio", "--version"]),
        "iperf3_version": package("iperf3"),
        "lunlock_commit": first_line(["git", "-C", ROOT, "describe", "--always", "--dirty"]),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


class Context:
    pass


def main():
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, help="measured seconds per round (default 10; --quick: 2)")
    parser.add_argument("--rounds", type=int, help="rounds per workload and target (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="short runs, one round: to check the script itself")
    args = parser.parse_args()
    ctx = Context()
    ctx.seconds = args.seconds or (2 if args.quick else 10)
    ctx.rounds = args.rounds or (1 if args.quick else 3)
    if ctx.seconds < 1 or ctx.rounds < 1:
        parser.error("--seconds and --rounds must be at least 1")
    ctx.workdir = os.environ.get("LUNLOCK_BENCH_WORKDIR")
    if not ctx.workdir:
        parser.error("run scripts/bench, not scripts/bench.py (it installs, builds and cleans up)")
    ctx.backing = os.path.join(ctx.workdir, "lun.img")
    ctx.procs = Processes(ctx.workdir)
    ctx.tgt_control = free_tgt_control_number()
    serve_help = run_quiet([LUNLOCK, "serve", "--help"], "lunlock serve --help")
    ctx.lock_stats_supported = "--lock-stats" in serve_help

    # SIGTERM (from the wrapper's trap) unwinds through the finally below like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    today = datetime.date.today().isoformat()
    name = today + ("-quick" if args.quick else "")
    try:
        doc = {"date": name, "options": {"seconds": ctx.seconds, "rounds": ctx.rounds, "quick": args.quick}}
        doc["machine"] = machine_info(ctx)
        ab_rounds = sum(ctx.rounds * (1 if w.get("lunlock_only") else 2) for w in WORKLOADS)
        log(f"{ab_rounds} target rounds of {ctx.seconds} s, limits, idle sessions; about "
            f"{(ab_rounds * (ctx.seconds + 3) + ctx.rounds * (2 * ctx.seconds + IPERF_SECONDS + 2) + 60) / 60:.0f} min")
        log(f"--lock-stats {'supported' if ctx.lock_stats_supported else 'not in this build'}")
        log(f"creating {LUN_BYTES >> 20} MiB of random data at {ctx.backing}")
        create_backing_file(ctx.backing)
        doc["backing"] = {"bytes": LUN_BYTES, "no_holes_before": True,
                          "filesystem": run_quiet(["df", "--output=fstype", ctx.backing], "df").split()[-1]}
        doc["limits"] = run_limits(ctx)
        doc["workloads"] = run_workloads(ctx)
        doc["idle_sessions"] = run_idle_sessions(ctx)
        doc["backing"]["no_holes_after"] = check_no_holes(ctx.backing)
        doc["lock_stats_supported"] = ctx.lock_stats_supported
        doc["lock_stats"] = lock_table(doc["workloads"], ctx.lock_stats_supported)
        doc["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        doc["duration_s"] = round(time.monotonic() - started, 1)
        doc["summary"] = summarize(doc["workloads"], doc["limits"], doc["idle_sessions"])
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        ctx.procs.stop_all()
    os.makedirs(RESULTS_DIR, exist_ok=True)
    base = os.path.join(RESULTS_DIR, name)
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    with open(base + ".md", "w") as f:
        f.write(markdown(doc))
    with open(base + ".svg", "w") as f:
        f.write(svg_chart(doc))
    for g in doc["summary"]["goals"]:
        log(f"{'MET    ' if g['met'] else 'NOT MET'} {g['goal']}: {g['measured']}")
    log(f"wrote {base}.md, .json and .svg in {doc['duration_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
