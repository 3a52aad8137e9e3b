#!/usr/bin/env python3
"""Failover time, reSTM against etcd, measured the same way in one run.

For each system: start three members on loopback, write one key in a loop against every
member in turn, SIGKILL the leader, and time from the kill to the first write a surviving
member acknowledges. Each round starts a fresh cluster; the figures are the per-round times
and their median, and the ratio of the medians.

    python3 bench/failover.py --restm target/release/restm --rounds 5
    python3 bench/failover.py --restm target/debug/restm --etcd /usr/bin/etcd

reSTM runs with its defaults (--heartbeat-interval 250, --election-timeout 700); etcd with
its own (--heartbeat-interval 100, --election-timeout 1000). Run by hand: the machine's load
moves the figures, so quote the ratio, not the times.
"""

import argparse
import base64
import concurrent.futures
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def call(method, url, body=None, timeout=5.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


class Restm:
    name = "restm"

    def __init__(self, binary, base):
        self.binary, self.base = binary, base

    def start(self, workdir):
        peers = ",".join(f"{i}=http://127.0.0.1:{self.base + 10 + i}" for i in (1, 2, 3))
        self.urls, self.procs = {}, {}
        for i in (1, 2, 3):
            self.urls[i] = f"http://127.0.0.1:{self.base + i}"
            self.procs[i] = subprocess.Popen(
                [self.binary, "serve", "--node-id", str(i), "--listen", f"127.0.0.1:{self.base + i}",
                 "--peer-listen", f"127.0.0.1:{self.base + 10 + i}", "--initial-cluster", peers,
                 "--data-dir", os.path.join(workdir, f"d{i}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def leader(self):
        for url in self.urls.values():
            try:
                _, body = call("GET", url + "/cluster")
                leader = json.loads(body)["groups"][0]["leader"]
                if leader is not None:
                    return leader
            except (OSError, ValueError, KeyError, IndexError):
                pass
        return None

    def write(self, member, n):
        status, _ = call("PUT", f"{self.urls[member]}/ptr/failover", n)
        return status == 200


class Etcd:
    name = "etcd"

    def __init__(self, binary, base):
        self.binary, self.base = binary, base

    def start(self, workdir):
        peers = ",".join(f"e{i}=http://127.0.0.1:{self.base + 10 + i}" for i in (1, 2, 3))
        self.urls, self.procs = {}, {}
        for i in (1, 2, 3):
            self.urls[i] = f"http://127.0.0.1:{self.base + i}"
            self.procs[i] = subprocess.Popen(
                [self.binary, "--name", f"e{i}", "--data-dir", os.path.join(workdir, f"e{i}"),
                 "--listen-client-urls", self.urls[i], "--advertise-client-urls", self.urls[i],
                 "--listen-peer-urls", f"http://127.0.0.1:{self.base + 10 + i}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.base + 10 + i}",
                 "--initial-cluster", peers, "--initial-cluster-state", "new"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def leader(self):
        for url in self.urls.values():
            try:
                _, body = call("POST", url + "/v3/maintenance/status", {})
                leader = json.loads(body).get("leader")
                if leader is None:
                    continue
                # The leader is named by etcd's member id: find whose it is.
                for i, u in self.urls.items():
                    _, b = call("POST", u + "/v3/maintenance/status", {})
                    if json.loads(b)["header"]["member_id"] == leader:
                        return i
            except (OSError, ValueError, KeyError):
                pass
        return None

    def write(self, member, n):
        key = base64.b64encode(b"failover").decode()
        value = base64.b64encode(str(n).encode()).decode()
        status, body = call("POST", f"{self.urls[member]}/v3/kv/put", {"key": key, "value": value})
        return status == 200 and b"error" not in body


def round_once(system, workdir):
    system.start(workdir)
    try:
        deadline = time.monotonic() + 30
        leader = None
        while time.monotonic() < deadline:
            leader = system.leader()
            if leader is not None and all(try_write(system, m, 0) for m in (1, 2, 3)):
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"{system.name}: no leader that takes writes within 30 s")
        time.sleep(2.0)  # a settled lead (and lease), as in steady service
        leader = system.leader()
        survivors = [m for m in (1, 2, 3) if m != leader]
        system.procs[leader].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        # A new write every 20 ms, alternating survivors, each waiting up to 5 s: a write
        # that hangs on a dead leader does not hold back the ones after it, so the first
        # acknowledgement is the moment the cluster takes writes again.
        acked = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=512) as pool:
            n = 1
            while not acked and time.monotonic() - killed < 30:
                member = survivors[n % 2]
                pool.submit(lambda m=member, i=n: try_write(system, m, i) and acked.append(time.monotonic()))
                n += 1
                time.sleep(0.02)
        if not acked:
            raise SystemExit(f"{system.name}: no write acknowledged within 30 s of the kill")
        return min(acked) - killed
    finally:
        for p in system.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()


def try_write(system, member, n):
    try:
        return system.write(member, n)
    except (OSError, urllib.error.HTTPError):
        return False


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--restm", default="target/release/restm")
    a.add_argument("--etcd", default="/usr/bin/etcd")
    a.add_argument("--rounds", type=int, default=5)
    a.add_argument("--base-port", type=int, default=27000)
    args = a.parse_args()
    systems = [Restm(args.restm, args.base_port), Etcd(args.etcd, args.base_port + 100)]
    times = {s.name: [] for s in systems}
    for r in range(args.rounds):
        for s in systems:  # interleaved, so both see the same load
            workdir = tempfile.mkdtemp(prefix=f"failover-{s.name}-")
            try:
                t = round_once(s, workdir)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            times[s.name].append(t)
            print(f"round {r + 1}: {s.name} first write {t * 1000:.0f} ms after the leader was killed", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k}: median {med[k] * 1000:.0f} ms, min {min(v) * 1000:.0f}, max {max(v) * 1000:.0f}")
    print(f"restm/etcd failover time (medians): {med['restm'] / med['etcd']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
