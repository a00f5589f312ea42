"""Shared pieces of the benchmark scripts: a throwaway etcd (plain or mutual TLS) on
loopback, certificates, and running scripts/bench-cni for a chain.

Everything made here lives in a temporary directory and is removed by close()."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc):
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (ECDSA P-256)."""

    def __init__(self, d):
        self.dir = d
        ca_key, ca = self.path("ca.key"), self.path("ca.crt")
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=bench-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        self.leaf("server", "serverAuth,clientAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        self.leaf("client", "clientAuth", "")
        self.ca = ca

    def path(self, name):
        return os.path.join(self.dir, name)

    def leaf(self, name, usage, extra):
        key, csr, crt, ext = (self.path(f"{name}.{x}") for x in ("key", "csr", "crt", "ext"))
        run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}"])
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    f"extendedKeyUsage={usage}\n{extra}")
        run(["openssl", "x509", "-req", "-in", csr, "-CA", self.path("ca.crt"), "-CAkey",
             self.path("ca.key"), "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext])


class Etcd:
    """Debian's etcd on 127.0.0.1 with the fast-start flags, optionally with client-cert TLS,
    optionally inside a network namespace (then its loopback is that namespace's)."""

    def __init__(self, tls=False, netns=None):
        self.netns = netns
        self.tmp = tempfile.mkdtemp(prefix="bench-etcd.")
        self.pki = Pki(self.tmp) if tls else None
        scheme = "https" if tls else "http"
        cp, pp = free_port(), free_port()
        self.endpoint = f"{scheme}://127.0.0.1:{cp}"
        cmd = ["etcd", "--name", "bench", "--data-dir", os.path.join(self.tmp, "data"),
               "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
               "--listen-peer-urls", f"http://127.0.0.1:{pp}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
               "--initial-cluster", f"bench=http://127.0.0.1:{pp}",
               "--heartbeat-interval", "10", "--election-timeout", "100",
               "--logger", "zap", "--log-outputs", "stderr", "--log-level", "error"]
        if tls:
            cmd += ["--cert-file", self.pki.path("server.crt"), "--key-file", self.pki.path("server.key"),
                    "--trusted-ca-file", self.pki.ca, "--client-cert-auth"]
        self.log = open(os.path.join(self.tmp, "etcd.log"), "w")
        self.proc = subprocess.Popen(self.wrap(cmd), stdout=self.log, stderr=self.log)
        deadline = time.time() + 15
        while not self.healthy():
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("etcd did not start")
            time.sleep(0.02)

    def wrap(self, cmd):
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + cmd

    def ctl(self, *args):
        cmd = ["etcdctl", "--endpoints", self.endpoint, "--dial-timeout", "2s"]
        if self.pki:
            cmd += ["--cacert", self.pki.ca, "--cert", self.pki.path("client.crt"),
                    "--key", self.pki.path("client.key")]
        return run(self.wrap(cmd + list(args))).stdout.decode()

    def kv_requests(self):
        """KV gRPC calls etcd has served so far (Range, Txn, Put, DeleteRange)."""
        cmd = ["curl", "-sf", f"{self.endpoint}/metrics"]
        if self.pki:
            cmd += ["--cacert", self.pki.ca, "--cert", self.pki.path("client.crt"),
                    "--key", self.pki.path("client.key")]
        total = 0
        for line in run(self.wrap(cmd)).stdout.decode().splitlines():
            if line.startswith("grpc_server_started_total") and 'grpc_service="etcdserverpb.KV"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def healthy(self):
        try:
            self.ctl("endpoint", "health")
            return True
        except subprocess.CalledProcessError:
            return False

    def plugin_settings(self):
        """The etcd keys of a Calico NetConf for this etcd."""
        s = {"etcd_endpoints": self.endpoint}
        if self.pki:
            s.update(etcd_ca_cert_file=self.pki.ca, etcd_cert_file=self.pki.path("client.crt"),
                     etcd_key_file=self.pki.path("client.key"))
        return s

    def add_pool(self, name, cidr, block_size=None):
        spec = {"cidr": cidr}
        if block_size:
            spec["blockSize"] = block_size
        pool = {"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": name}, "spec": spec}
        self.ctl("put", f"/calico/resources/v3/projectcalico.org/ippools/{name}", json.dumps(pool))

    def register_node(self, name):
        """The Calico Node resource calico-node writes when it starts: Calico's IPAM assigns
        addresses automatically only to registered nodes."""
        node = {"kind": "Node", "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": name, "creationTimestamp": "2026-05-01T10:00:00Z"}, "spec": {}}
        self.ctl("put", f"/calico/resources/v3/projectcalico.org/nodes/{name}", json.dumps(node))

    def close(self):
        stop(self.proc)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _cpu_times():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def settle(max_wait=60.0, idle=0.9):
    """Waits until the machine is idle again: the kernel frees the namespaces a previous
    run deleted in the background for seconds, which would otherwise be billed to the next
    chain measured."""
    deadline = time.time() + max_wait
    while time.time() < deadline:
        t0, i0 = _cpu_times()
        time.sleep(0.5)
        t1, i1 = _cpu_times()
        if t1 > t0 and (i1 - i0) / (t1 - t0) >= idle:
            return
    print("benchlib: the machine did not settle; figures may be noisy", flush=True)


def bench_chain(label, conflist, cni_path, pods, work, extra_args=(), prefill=0, node_netns=None):
    """Runs scripts/bench-cni on `conflist` (a dict) and returns its figures (after waiting
    for the machine to be idle)."""
    settle()
    path = os.path.join(work, f"{label}.conflist")
    out = os.path.join(work, f"{label}.json")
    with open(path, "w") as f:
        json.dump(conflist, f)
    subprocess.run([os.path.join(REPO, "scripts", "bench-cni"), "--conflist", path, "--label", label,
                    "--pods", str(pods), "--cni-path", cni_path, "--json", out,
                    "--driver", os.path.join(REPO, "target", "testbin", "cni-driver"),
                    "--noop", os.path.join(REPO, "target", "release", "cni-noop"),
                    "--prefill", str(prefill), *(["--node-netns", node_netns] if node_netns else []),
                    *extra_args],
                   check=True)
    with open(out) as f:
        return json.load(f)


# The plugins a node installs, built static by scripts/build-plugins (what README's install
# uses); everything else the benchmarks run comes from the ordinary release build.
PLUGINS = ("calico", "calico-ipam", "portmap")


def build_plugins():
    """Builds the static plugin binaries (scripts/build-plugins); returns their directory."""
    out = subprocess.run([os.path.join(REPO, "scripts", "build-plugins"), "--quiet"], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out.strip()


def binary(name):
    """Where the benchmarks take our binary `name` from."""
    if name in PLUGINS:
        return os.path.join(REPO, "target", "x86_64-unknown-linux-gnu", "release", name)
    return os.path.join(REPO, "target", "release", name)


def install(src, dst):
    """Puts a fresh copy of the executable `src` at `dst`, as a node's install does. Every
    chain's binaries are copied at the start of a run rather than linked: how fast a binary
    starts depends on the state of its file's page cache, which ages differently for each
    file (this machine pages out memory it finds idle, `kdamond` with a `pageout` scheme):
    the same calico build ran ADD in 3.70 ms from a file copied 47 minutes before and
    3.29 ms from one copied just before, alternating call by call (200 pods, session 32),
    with as many page faults, each costing more. Copies made together start alike,
    whichever build or project they come from."""
    shutil.copy2(src, dst)


def cni_path_with(work, name, ours=(), reference=()):
    """A directory of fresh copies ([`install`]) of exactly the plugins a chain may use."""
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    for b in ours:
        install(binary(b), os.path.join(d, b))
    for b in reference:
        install(os.path.join("/usr/lib/cni", b), os.path.join(d, b))
    return d


def share(fig, verb, stat):
    return fig[verb]["share"][stat]


def nearest_rank(values, q):
    import math
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)] if s else float("nan")


def round_orders(n, rounds):
    """The order of n chains in each of `rounds` rounds. When n is even and the rounds a
    multiple of it: a Williams square (rows 0, 1, n-1, 2, n-2, ... shifted by one each
    round), so that every chain is run after every other one equally often and in every
    position equally often. With the order reversed every other round (below), four chains
    do not get that: in `bench-calico --baseline`, calico with calico-node ran right after
    ptp + host-local in half the rounds and the baseline build never (README, session 30).
    Otherwise the order is reversed every other round, so no chain always follows the same
    one."""
    if n % 2 == 0 and rounds % n == 0:
        first, low, high = [0], 1, n - 1
        while len(first) < n:
            first.append(low if len(first) % 2 else high)
            if len(first) % 2:
                high -= 1
            else:
                low += 1
        return [[(c + r) % n for c in first] for r in range(rounds)]
    return [list(range(n)) if r % 2 == 0 else list(reversed(range(n))) for r in range(rounds)]


def pooled_rounds(chains, pods, rounds, work, node_netns=None, around=None):
    """Measures `chains` (label, conflist, cni_path, extra_args_for_round) in `rounds` rounds
    of pods // rounds pods each, every chain once per round in turn (in the orders of
    `round_orders`), and pools the per-pod shares: a chain measured minutes after another
    would otherwise carry the machine's drift in between. `around(label, run)` may wrap each
    run (to count requests, say). Returns {label: {verb: {"median", "p99", "n", "samples"}}}."""
    import statistics
    per_round = max(1, pods // rounds)
    samples = {}
    for r, indices in enumerate(round_orders(len(chains), rounds)):
        order = [(i, chains[i]) for i in indices]
        for i, (label, conflist, path, extra) in order:
            def run(label=label, conflist=conflist, path=path, extra=extra, i=i):
                return bench_chain(f"r{r}c{i}", conflist, path, per_round, work,
                                   extra_args=extra(r), node_netns=node_netns)
            fig = around(label, run) if around else run()
            for verb in ("ADD", "DEL"):
                samples.setdefault(label, {}).setdefault(verb, []).extend(fig[verb]["share"]["samples"])
    return {label: {verb: {"median": statistics.median(v), "p99": nearest_rank(v, 0.99), "n": len(v),
                           "samples": v}
                    for verb, v in verbs.items()}
            for label, verbs in samples.items()}


class Agent:
    """`calico-node run` in `netns`, serving `etcd` (a benchlib.Etcd; None: a local endpoint
    nobody serves, for benchmarks of kernel work only) on its own socket in a temporary
    directory; its CPU time and resident memory read from /proc, so what the
    plugins hand over to it is billed too. close() stops it with SIGTERM."""

    def __init__(self, etcd, netns, binary=None):
        self.tmp = tempfile.mkdtemp(prefix="bench-agent.")
        self.socket = os.path.join(self.tmp, "calico-node.sock")
        env = dict(os.environ, CALICO_NODE_SOCKET=self.socket, LOG_LEVEL="warning",
                   ETCD_ENDPOINTS=etcd.endpoint if etcd else f"http://127.0.0.1:{free_port()}")
        if etcd and etcd.pki:
            env.update(ETCD_CA_CERT_FILE=etcd.pki.ca, ETCD_CERT_FILE=etcd.pki.path("client.crt"),
                       ETCD_KEY_FILE=etcd.pki.path("client.key"))
        self.binary = binary or os.path.join(REPO, "target", "release", "calico-node")
        self.log = open(os.path.join(self.tmp, "calico-node.log"), "w")
        # `ip netns exec` execs the agent in place, so the pid is the agent's.
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, self.binary, "run"], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.env = env
        deadline = time.time() + 10
        while not self.live():
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise SystemExit(f"calico-node run did not start; see {self.log.name}")
            time.sleep(0.02)

    def live(self):
        return subprocess.run([self.binary, "health", "--live"], env=self.env,
                              capture_output=True).returncode == 0

    def pids(self):
        """The agent and its children (calico-bgpd under the BGP backend): what the node
        pays for it."""
        pids = [self.proc.pid]
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                pids.append(int(entry))
        return pids

    def cpu_ms(self):
        """User + system CPU time so far of the agent and its children, ms."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total * 1000.0 / os.sysconf("SC_CLK_TCK")

    def wait_quiet(self, still=2.0, bound=60.0):
        """Waits until the agent's CPU time has not moved for `still` seconds (its deferred
        work done), `bound` seconds at most."""
        deadline = time.time() + bound
        while time.time() < deadline:
            before = self.cpu_ms()
            time.sleep(still)
            if self.cpu_ms() == before:
                return

    def rss_kb(self):
        """Resident size of the agent and its children, kB."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                continue
        return total

    def close(self):
        stop(self.proc)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
