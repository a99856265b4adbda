#!/usr/bin/env python3
"""`make chaos` (issue 17): the sharded sample topology (config/sharded.yaml: main,
events1, events2, sync2, writers1, writers2) under `lattice up`, with a PostgreSQL and a
Redis of its own, carries `lattice bench chat` traffic (every send retried with the same
transaction id for up to a minute, as a patient client does) while this script kills,
in turn, with SIGKILL: an event persister, the sync instance (also a background
instance), the instance serving the client API (and the other background instance),
a writer of every other stream (typing, receipts, account data, presence, push rules,
to-device, device lists), the other event persister, the other writer of the other
streams, Redis (then started again) and PostgreSQL (then started again). `lattice up`
restarts the instances it runs.

After each kill, a probe sends one message to each of eight rooms until all of them
are accepted ("sends back after"), then, until each is accepted, writes every other
stream: for eight users account data, presence, a push rule, a to-device message and
device keys (a device list change), and in the eight rooms a read receipt and typing
("other writes back after"; both counted from the kill). When the bench is done, its
consistency check says how many acknowledged sends were never delivered to a member
(lost), delivered twice, or out of order. Exit status 1 unless all three are 0 and every
recovery took at most 15 s. Results: var/chaos/<stamp>/chaos.md (and the bench's JSON
line in chaos.jsonl, the topology's log in up.log).

  python3 .ci/chaos.py [--short] [--bin PATH]

--short (what `make test` runs): four kills (an event persister, the client-API
instance, a writer of the other streams, Redis) under a lighter load. --bin: the
lattice binary (default: the release build, built if missing).
"""

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ed25519  # noqa: E402  (.ci/ed25519.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECOVERY_LIMIT_S = 15.0


def log(message):
    print(f"chaos: {message}", file=sys.stderr, flush=True)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def http(method, url, body=None, token=None, timeout=5.0):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
            try:
                return answer.status, json.loads(raw or b"{}")
            except ValueError:
                return answer.status, {}
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read() or b"{}")
        except ValueError:
            return error.code, {}


def unpadded_base64(data):
    return base64.b64encode(data).decode().rstrip("=")


def device_keys(user_id, device_id, n):
    """Device keys signed by the device's own ed25519 key, new for each `n` (a new
    curve25519 key), so that each upload is a device list change."""
    secret = hashlib.sha256(f"{user_id}/{device_id}".encode()).digest()
    keys = {"user_id": user_id, "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {f"curve25519:{device_id}": unpadded_base64(hashlib.sha256(f"{n}".encode()).digest()),
                     f"ed25519:{device_id}": unpadded_base64(ed25519.public_key(secret))}}
    canonical = json.dumps(keys, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    signature = ed25519.sign(secret, canonical.encode())
    keys["signatures"] = {user_id: {f"ed25519:{device_id}": unpadded_base64(signature)}}
    return keys


class Chaos:
    def __init__(self, args):
        self.args = args
        self.stamp = time.strftime("%Y%m%dt%H%M%Sz", time.gmtime())
        self.dir = os.path.join(ROOT, "var", "chaos", self.stamp)
        os.makedirs(self.dir, exist_ok=True)
        self.bin = args.bin
        (self.pg_port, self.redis_port, self.main_port, self.events1_port,
         self.events2_port, self.sync2_port, self.writers1_port,
         self.writers2_port) = free_ports(8)
        self.pg_env = dict(os.environ, LATTICE_PG_PORT=str(self.pg_port),
                           LATTICE_PG_DIR=os.path.join(self.dir, "pg"), LATTICE_PG_FAST="1")
        self.redis = None
        self.up = None
        self.bench = None
        self.kills = []

    # The services of our own.
    def start_postgres(self):
        subprocess.run([os.path.join(ROOT, ".ci/postgres.sh"), "start"], env=self.pg_env,
                       check=True, stdout=subprocess.DEVNULL)

    def postgres_url(self):
        return subprocess.run([os.path.join(ROOT, ".ci/postgres.sh"), "url"], env=self.pg_env,
                              check=True, capture_output=True, text=True).stdout.strip()

    def postmaster_pid(self):
        with open(os.path.join(self.dir, "pg", "data", "postmaster.pid")) as f:
            return int(f.readline())

    def start_redis(self):
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.redis = subprocess.Popen(
            [server, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=open(os.path.join(self.dir, "redis.log"), "a"), stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("chaos: redis did not start")

    # The topology.
    def start_topology(self):
        homeserver = os.path.join(self.dir, "homeserver.yaml")
        with open(homeserver, "w") as f:
            subprocess.run([self.bin, "generate-config", "--server-name", "localhost"],
                           stdout=f, check=True)
        with open(os.path.join(ROOT, "config", "sharded.yaml")) as f:
            topology = f.read()
        topology = re.sub(r"^homeserver: .*$", f"homeserver: {homeserver}", topology, flags=re.M)
        for old, new in [("8008", self.main_port), ("8010", self.events1_port),
                         ("8011", self.events2_port), ("8012", self.sync2_port),
                         ("8013", self.writers1_port), ("8014", self.writers2_port),
                         ("6390", self.redis_port)]:
            topology = re.sub(rf"\b{old}\b", str(new), topology)
        path = os.path.join(self.dir, "sharded.yaml")
        with open(path, "w") as f:
            f.write(topology)
        env = dict(os.environ,
                   LATTICE__DATABASE__URL=self.postgres_url(),
                   LATTICE__ENABLE_REGISTRATION="true",
                   LATTICE__RATE_LIMITS__ENABLED="false",
                   LATTICE__PUBLIC_BASEURL=f"http://127.0.0.1:{self.main_port}",
                   LATTICE__LOG="info")
        self.up = subprocess.Popen([self.bin, "up", "--topology", path], env=env,
                                   stdout=open(os.path.join(self.dir, "up.log"), "a"),
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for port in (self.events1_port, self.events2_port, self.sync2_port, self.writers1_port,
                     self.writers2_port, self.main_port):
            self.wait_for_health(port)

    def wait_for_health(self, port, within=60.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.up.poll() is not None:
                raise SystemExit(f"chaos: lattice up exited ({self.up.returncode}); see {self.dir}/up.log")
            try:
                status, _ = http("GET", f"http://127.0.0.1:{port}/health", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"chaos: port {port} did not answer /health; see {self.dir}/up.log")

    def instance_pid(self, name):
        out = subprocess.run(["pgrep", "-P", str(self.up.pid), "-f", "--", f"--instance {name}( |$)"],
                             capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None

    # The probe: eight users; the first sends to eight rooms.
    def make_probe(self):
        base = f"http://127.0.0.1:{self.main_port}/_matrix/client/v3"
        self.probe_users = []
        for n in range(8):
            status, body = http("POST", f"{base}/register",
                                {"username": f"chaos-probe{n}", "password": "chaos-probe-password",
                                 "auth": {"type": "m.login.dummy"}})
            if status != 200:
                raise SystemExit(f"chaos: probe registration answered {status}: {body}")
            self.probe_users.append((body["user_id"], body["device_id"], body["access_token"]))
        self.probe_token = self.probe_users[0][2]
        self.probe_rooms = []
        for _ in range(8):
            status, body = http("POST", f"{base}/createRoom", {"preset": "private_chat"},
                                self.probe_token)
            if status != 200:
                raise SystemExit(f"chaos: probe createRoom answered {status}: {body}")
            self.probe_rooms.append(body["room_id"])
        self.probe_events = {}
        self.probe_txn = 0

    def until_accepted(self, method, path, body, token, since, limit):
        """Retries one request until it answers 200; False once `limit` has passed."""
        url = f"http://127.0.0.1:{self.main_port}/_matrix/client/v3{path}"
        last = None
        while True:
            try:
                status, answer = http(method, url, body, token, timeout=2)
                if status == 200:
                    return answer
                last = f"{status} {answer}"
            except OSError as error:
                last = str(error)
            if time.monotonic() - since > limit:
                log(f"  {method} {path} not accepted within {limit:.0f} s; last answer: {last}")
                return None
            time.sleep(0.1)

    def probe(self, since, limit=60.0):
        """Seconds from `since` until every probe room accepted a send, and until every
        other stream accepted a write (None: not within `limit`)."""
        for room in self.probe_rooms:
            self.probe_txn += 1
            answer = self.until_accepted("PUT", f"/rooms/{room}/send/m.room.message/probe{self.probe_txn}",
                                         {"msgtype": "m.text", "body": "probe"}, self.probe_token,
                                         since, limit)
            if answer is None:
                return None, None
            self.probe_events[room] = answer["event_id"]
        sends = time.monotonic() - since
        n = self.probe_txn
        writes = []
        for user_id, device_id, token in self.probe_users:
            quoted = urllib.parse.quote(user_id)
            writes += [
                ("PUT", f"/user/{quoted}/account_data/org.lattice.chaos", {"n": n}, token),
                ("PUT", f"/presence/{quoted}/status", {"presence": "online", "status_msg": f"probe {n}"}, token),
                ("PUT", "/pushrules/global/content/chaos", {"pattern": f"chaos{n}", "actions": []}, token),
                ("PUT", f"/sendToDevice/org.lattice.chaos/probe{n}",
                 {"messages": {user_id: {device_id: {"n": n}}}}, token),
                ("POST", "/keys/upload", {"device_keys": device_keys(user_id, device_id, n)}, token),
            ]
        user_id = urllib.parse.quote(self.probe_users[0][0])
        for room in self.probe_rooms:
            writes += [
                ("POST", f"/rooms/{room}/receipt/m.read/{urllib.parse.quote(self.probe_events[room])}",
                 {}, self.probe_token),
                ("PUT", f"/rooms/{room}/typing/{user_id}", {"typing": True, "timeout": 5000},
                 self.probe_token),
            ]
        for method, path, body, token in writes:
            if self.until_accepted(method, path, body, token, since, limit) is None:
                return sends, None
        return sends, time.monotonic() - since

    # The kills.
    def kill_instance(self, name):
        pid = self.instance_pid(name)
        if pid is None:
            raise SystemExit(f"chaos: no process for {name}")
        os.kill(pid, signal.SIGKILL)

    def kill_redis(self):
        self.redis.kill()
        self.redis.wait()
        time.sleep(1)
        self.start_redis()

    def kill_postgres(self):
        postmaster = self.postmaster_pid()
        backends = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True,
                                  text=True).stdout.split()
        pids = [postmaster] + [int(pid) for pid in backends]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(100):
            alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
            if not alive:
                break
            time.sleep(0.05)
        time.sleep(1)
        self.start_postgres()

    def run(self):
        short = self.args.short
        self.start_postgres()
        self.start_redis()
        self.start_topology()
        log(f"topology up (main :{self.main_port}), run directory {self.dir}")
        self.make_probe()
        # Long enough for every kill and its recovery (about 10 s each).
        messages = 55 if short else 150
        rate = 40 if short else 50
        bench_log = open(os.path.join(self.dir, "bench.log"), "w")
        self.bench = subprocess.Popen(
            [self.bin, "bench", "chat", "--name", "chaos", "--label", "chaos",
             "--base-url", f"http://127.0.0.1:{self.main_port}",
             "--sync-url", f"http://127.0.0.1:{self.sync2_port}",
             "--sync-url", f"http://127.0.0.1:{self.main_port}",
             "--users", "40", "--rooms", "4", "--per-room", "10", "--senders", "40",
             "--messages", str(messages), "--rate", str(rate), "--retry-for", "60",
             "--drain-timeout", "60", "--sync-timeout", "10",
             "--json-out", os.path.join(self.dir, "chaos.jsonl")],
            stdout=bench_log, stderr=subprocess.STDOUT)
        # Kills start once the bench is sending.
        deadline = time.monotonic() + 120
        while "operations" not in open(os.path.join(self.dir, "bench.log")).read():
            if self.bench.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"chaos: the bench never started sending; see {self.dir}/bench.log")
            time.sleep(0.5)
        targets = ([("events1", "an event persister"),
                    ("main", "the client API, background"),
                    ("writers1", "a writer of each other stream"),
                    ("redis", "Redis")] if short else
                   [("events1", "an event persister"), ("sync2", "a sync instance, background"),
                    ("main", "the client API, background"),
                    ("writers1", "a writer of each other stream"),
                    ("events2", "the other event persister"),
                    ("writers2", "the other writer of each other stream"), ("redis", "Redis"),
                    ("postgres", "PostgreSQL")])
        if self.args.only:
            targets = [(t, w) for t, w in targets if t in self.args.only.split(",")]
        gap = 4 if short else 5
        for target, what in targets:
            time.sleep(gap)
            if self.bench.poll() is not None:
                log("the bench finished before every kill was done")
                break
            log(f"kill -9 {target} ({what})")
            killed = time.monotonic()
            if target == "redis":
                self.kill_redis()
            elif target == "postgres":
                self.kill_postgres()
            else:
                self.kill_instance(target)
            sends, writes = self.probe(killed)
            log(f"  sends accepted again after {sends if sends is None else round(sends, 1)} s, "
                f"other writes after {writes if writes is None else round(writes, 1)} s")
            self.kills.append((target, what, sends, writes))
        self.bench.wait(timeout=600)
        return self.report()

    def report(self):
        lines = open(os.path.join(self.dir, "chaos.jsonl")).read().splitlines() \
            if os.path.exists(os.path.join(self.dir, "chaos.jsonl")) else []
        if not lines:
            log(f"the bench wrote no report; see {self.dir}/bench.log")
            return 1
        r = json.loads(lines[-1])
        lost, dup, ooo = r["undelivered"], r["duplicated"], r["out_of_order"]
        def seconds(back):
            return "never (> 60 s)" if back is None else f"{back:.1f} s"
        table = ["| killed | what it runs | sends back after | other writes back after |",
                 "|---|---|---:|---:|"]
        for target, what, sends, writes in self.kills:
            table.append(f"| {target} | {what} | {seconds(sends)} | {seconds(writes)} |")
        table += ["", "| acknowledged sends | failed sends | deliveries expected | lost | duplicated | out of order | limited timelines |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {r['accepted']} | {r['failed']} | {r['deliveries_expected']} | {lost} | {dup} | {ooo} | {r['limited_timelines']} |"]
        text = "\n".join(table) + "\n"
        with open(os.path.join(self.dir, "chaos.md"), "w") as f:
            f.write(text)
        print(text)
        worst = max((back if back is not None else float("inf"))
                    for _, _, sends, writes in self.kills for back in (sends, writes)) \
            if self.kills else 0.0
        ok = lost == 0 and dup == 0 and ooo == 0 and worst <= RECOVERY_LIMIT_S and self.kills
        log(("passed" if ok else "FAILED") + f": lost {lost}, duplicated {dup}, out of order {ooo}, "
            f"slowest recovery {worst:.1f} s (limit {RECOVERY_LIMIT_S} s); {self.dir}")
        return 0 if ok else 1

    def cleanup(self):
        for process in (self.bench, self.up):
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        if self.redis and self.redis.poll() is None:
            self.redis.kill()
        subprocess.run([os.path.join(ROOT, ".ci/postgres.sh"), "stop"], env=self.pg_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not self.args.keep:
            shutil.rmtree(os.path.join(self.dir, "pg"), ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--bin", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL cluster")
    parser.add_argument("--only", default=None,
                        help="kill only these (comma-separated: events1,sync2,main,writers1,events2,"
                             "writers2,redis,postgres)")
    args = parser.parse_args()
    if args.bin is None:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        args.bin = os.path.join(target, "release", "lattice")
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    chaos = Chaos(args)
    try:
        code = chaos.run()
    finally:
        chaos.cleanup()
    sys.exit(code)


if __name__ == "__main__":
    main()
