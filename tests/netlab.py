"""Network namespaces joined by impaired veth links, for tests and benches of bad networks.

``tc netem`` is not in this kernel, so an impairment is built from what is: random loss by
an nftables rule, delay and jitter by a small NFQUEUE delayer (this file run as a script
inside the namespace, holding each packet and releasing it later), and rate caps by a tbf
qdisc on an ifb device. An impairment is set per direction, on the sending end
(:meth:`Endpoint.impair`), so a client's downlink is the far end's and its uplink its own;
it acts at the receiving end's ingress, so the sender's stack sees no error (see
:class:`Endpoint`).

Everything a :class:`Lab` creates lives in namespaces whose names carry the lab's pid and a
random token, so parallel runs never collide; closing the lab (a context manager, so also
on Ctrl-C) removes them, which also removes their veths, rules and qdiscs. Labs left by a
killed process are swept by the next lab. Needs root, ``ip``, ``nft`` and ``tc``; the
delayer needs the ``netfilterqueue`` package (apt ``libnetfilter-queue-dev`` to build it).

Only the standard library is imported here, so any script can use it::

    with Lab() as lab:                                  # tests: the ``netlab`` fixture
        net = star(lab, ["alice", "victim"])            # a server namespace, one per client
        net.downlink("victim").impair(Impairment(loss_pct=5, delay_ms=50, jitter_ms=10))
        net.uplink("victim").impair(Impairment(rate_kbit=500))
        server = net.server.popen([..., "--host", "0.0.0.0", ...])   # ended on close
        url = f"ws://{net.links['victim'].a.ip}:{port}/ws"  # as the victim reaches it
        BotProcess(url, "victim", ..., prefix=net.clients["victim"].argv([]))

For peer-to-peer behind NAT, :func:`nat_topology` gives clients behind masquerading
routers and a public namespace that routes between them.
"""

from __future__ import annotations

import contextlib
import heapq
import importlib.util
import os
import random
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "cflab"
_NAME = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]+)-")


class LabError(RuntimeError):
    """The lab could not build what was asked (not root, a tool missing, a command failed)."""


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({result.returncode}): "
                       f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def require_tools() -> None:
    """Raise :class:`LabError` saying exactly what is missing to build a lab here."""
    if os.geteuid() != 0:
        raise LabError("network namespaces need root (CI runs as root)")
    missing = [tool for tool in ("ip", "nft", "tc", "iptables", "iptables-restore", "sysctl")
               if shutil.which(tool) is None]
    if missing:
        raise LabError(f"missing tools {missing}: apt-get install iproute2 nftables iptables")
    if importlib.util.find_spec("netfilterqueue") is None:
        raise LabError("the delayer needs netfilterqueue: apt-get install "
                       "libnetfilter-queue-dev, then pip install -e '.[test]'")


@dataclass(frozen=True)
class Impairment:
    """What one direction of a link does to packets (all zero/None: a clean link)."""

    loss_pct: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0  # each packet's delay is uniform in delay +/- jitter: reorders
    rate_kbit: float | None = None
    queue_ms: float = 100.0  # how long a packet may wait at the rate cap before it is dropped
    udp_only: bool = True  # loss and delay hit media; TCP (signaling) only meets the rate cap

    @property
    def delays(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0

    def describe(self) -> str:
        parts = []
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g} % loss")
        if self.delays:
            parts.append(f"{self.delay_ms:g}+/-{self.jitter_ms:g} ms")
        if self.rate_kbit:
            parts.append(f"{self.rate_kbit:g} kbit/s")
        return ", ".join(parts) or "clean"


CLEAN = Impairment()


def tbf_burst_bytes(rate_kbit: float) -> int:
    """10 ms at the rate, but at least two full-size packets (less would drop every MTU
    packet, more lets bursts through that the cap should have spread)."""
    return max(3200, int(rate_kbit * 1000 / 8 * 0.010))


class Namespace:
    """One network namespace (or the root one, ``name`` None)."""

    def __init__(self, lab: Lab, name: str | None, role: str) -> None:
        self.lab = lab
        self.name = name
        self.role = role
        self.processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Namespace({self.role!r}, {self.name!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs, so the pid is the
        command's own)."""
        if self.name is None:
            return list(argv)
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return _run(self.argv(argv), check=check, input=input, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """A process in this namespace; the lab ends it on close if it still runs."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kwargs)
        self.processes.append(proc)
        return proc

    def ip(self, *args: str) -> None:
        _run(["ip", *(["-n", self.name] if self.name else []), *args])

    def nft(self, script: str) -> None:
        self.run(["nft", "-f", "-"], input=script)

    def enable_forwarding(self) -> None:
        self.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def default_route(self, via: str) -> None:
        self.ip("route", "replace", "default", "via", via)

    def masquerade(self, out: Endpoint, *, fully_random: bool = False) -> None:
        """NAT everything leaving through ``out`` behind its address: Linux keeps the source
        port when it can (an endpoint-independent mapping, what hole punching needs);
        ``fully_random`` picks a new port per flow (a symmetric NAT, where it fails)."""
        table = f"{PREFIX}_nat_{out.dev}"
        self.nft(
            f"table ip {table} {{\n"
            "  chain post { type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "{out.dev}" masquerade{" fully-random" if fully_random else ""}\n'
            "  }\n}\n"
        )
        self.lab._tables.append((self, "ip", table))

    def addresses(self) -> list[str]:
        out = _run(["ip", *(["-n", self.name] if self.name else []), "-4", "-o", "addr"]).stdout
        return re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)

    def stop_processes(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.processes.clear()


@dataclass(eq=False)
class Endpoint:
    """One end of a veth link: its namespace, device and address.

    :meth:`impair` shapes what this end *sends* (its egress), but every mechanism acts
    where the packets arrive, at the peer's ingress, as a network would: a packet dropped
    by a rule on the sender's own egress makes its ``sendto`` fail with EPERM, and a rate
    cap on the sender's qdisc pushes back on its sockets, neither of which a real path
    does. So the peer redirects its ingress through an ifb device carrying the tbf cap,
    then nftables drops (loss) and an NFQUEUE delayer in the peer's namespace holds
    packets (delay, jitter)."""

    ns: Namespace
    dev: str
    ip: str
    link: Link | None = None
    impairment: Impairment = CLEAN
    _delayer: subprocess.Popen[str] | None = None
    _queue: int = 0
    _chained: bool = False
    _ifb: bool = False

    @property
    def peer(self) -> Endpoint:
        assert self.link is not None
        return self.link.b if self is self.link.a else self.link.a

    @property
    def table(self) -> str:  # in the peer's namespace, for what arrives from this end
        return f"{PREFIX}_{self.peer.dev}"

    @property
    def chain(self) -> str:
        return f"CFLAB_{self.peer.dev}"

    @property
    def ifb(self) -> str:
        return f"{self.peer.dev}i"

    def impair(self, impairment: Impairment | None) -> None:
        """Make what this end sends meet ``impairment`` (None: clean), replacing what it
        met before. A changed delay starts a new delayer before the old one stops, so no
        packet is lost to the switch; a rate-only change touches only the qdisc."""
        imp = impairment or CLEAN
        old = self.impairment
        if (imp.loss_pct, imp.delay_ms, imp.jitter_ms, imp.udp_only) != (
            old.loss_pct, old.delay_ms, old.jitter_ms, old.udp_only
        ):
            self._set_rules(imp)
        if (imp.rate_kbit, imp.queue_ms) != (old.rate_kbit, old.queue_ms):
            self._set_rate(imp)
        self.impairment = imp

    def clear(self) -> None:
        self.impair(None)

    def _set_rules(self, imp: Impairment) -> None:
        ns, dev = self.peer.ns, self.peer.dev
        old_delayer = self._delayer
        match = f'iifname "{dev}" ' + ("meta l4proto udp " if imp.udp_only else "")
        rule = ""
        if imp.loss_pct >= 100:
            rule = f"    {match}counter drop\n"
        elif imp.loss_pct > 0:
            threshold = round(imp.loss_pct * 10_000)  # parts per million
            rule = f"    {match}numgen random mod 1000000 < {threshold} counter drop\n"
        # declare, flush and refill in one transaction: never a moment without rules
        ns.nft(
            f"table inet {self.table} {{}}\nflush table inet {self.table}\n"
            f"table inet {self.table} {{\n"
            "  chain pre { type filter hook prerouting priority filter; policy accept;\n"
            f"{rule}  }}\n}}\n"
        )
        if (ns, "inet", self.table) not in ns.lab._tables:
            ns.lab._tables.append((ns, "inet", self.table))
        # nft's own queue statement needs nft_queue, which this kernel lacks; iptables'
        # NFQUEUE target (through nft's xt compatibility) works
        self._delayer = None
        queue_rule = ""
        if imp.delays:
            self._queue = ns.lab.next_queue()
            self._delayer = start_delayer(ns, self._queue, imp.delay_ms, imp.jitter_ms)
            # no bypass: a delayer that dies drops the packets, which no one can miss
            proto = "-p udp " if imp.udp_only else ""
            queue_rule = f"-A {self.chain} {proto}-j NFQUEUE --queue-num {self._queue}\n"
        if imp.delays or self._chained:
            if not self._chained:
                ns.run(["iptables", "-t", "mangle", "-N", self.chain])
                ns.run(["iptables", "-t", "mangle", "-A", "PREROUTING", "-i", dev,
                        "-j", self.chain])
                self._chained = True
            ns.run(["iptables-restore", "--noflush"],
                   input=f"*mangle\n-F {self.chain}\n{queue_rule}COMMIT\n")
        if old_delayer is not None:
            stop_process(old_delayer)

    def _set_rate(self, imp: Impairment) -> None:
        ns, dev = self.peer.ns, self.peer.dev
        if imp.rate_kbit and not self._ifb:
            ns.ip("link", "add", self.ifb, "type", "ifb")
            self._ifb = True
            ns.ip("link", "set", self.ifb, "up")
            ns.run(["tc", "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"])
            # (no matchall classifier in this kernel: u32 matching everything)
            ns.run(["tc", "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all",
                    "u32", "match", "u32", "0", "0",
                    "action", "mirred", "egress", "redirect", "dev", self.ifb])
        if imp.rate_kbit:
            ns.run(["tc", "qdisc", "replace", "dev", self.ifb, "root", "tbf",
                    "rate", f"{imp.rate_kbit:g}kbit",
                    "burst", str(tbf_burst_bytes(imp.rate_kbit)),
                    "latency", f"{imp.queue_ms:g}ms"])
        elif self._ifb:
            self._remove_ifb()

    def _remove_ifb(self) -> None:
        ns, dev = self.peer.ns, self.peer.dev
        ns.run(["tc", "qdisc", "del", "dev", dev, "handle", "ffff:", "ingress"], check=False)
        _run(["ip", *(["-n", ns.name] if ns.name else []), "link", "del", self.ifb],
             check=False)
        self._ifb = False

    def counters(self) -> dict[str, int]:
        """Packets from this end dropped (``drop``, loss rules only) and delayed
        (``queue``) so far."""
        counts = {"drop": 0, "queue": 0}
        for what in (["table", "inet", self.table], ["chain", "ip", "mangle", self.chain]):
            listing = self.peer.ns.run(["nft", "list", *what], check=False).stdout
            for found in re.finditer(r"counter packets (\d+) bytes \d+ (drop|queue)", listing):
                counts[found.group(2)] += int(found.group(1))
        return counts

    def stop(self) -> None:
        """Undo what lives outside the lab's namespaces (those go with them) and stop the
        delayer."""
        ns = self.peer.ns
        if self._chained:  # the queue rule first, so nothing waits on a stopped delayer
            ns.run(["iptables", "-t", "mangle", "-D", "PREROUTING", "-i", self.peer.dev,
                    "-j", self.chain], check=False)
            ns.run(["iptables", "-t", "mangle", "-F", self.chain], check=False)
            ns.run(["iptables", "-t", "mangle", "-X", self.chain], check=False)
            self._chained = False
        if self._delayer is not None:
            stop_process(self._delayer)
            self._delayer = None
        if self._ifb and ns.name is None:
            self._remove_ifb()


@dataclass(eq=False)
class Link:
    """A veth pair: ``a`` in one namespace, ``b`` in the other, one /24 between them."""

    a: Endpoint
    b: Endpoint

    def ends(self) -> tuple[Endpoint, Endpoint]:
        return self.a, self.b

    def set_mtu(self, mtu: int) -> None:
        """Both ends' MTU (a veth's is 1500, loopback's 65536: a sender that never saw
        a 1500-byte path may send datagrams that only fragmented arrive)."""
        for end in self.ends():
            end.ns.ip("link", "set", end.dev, "mtu", str(mtu))


def start_delayer(ns: Namespace, queue: int, delay_ms: float,
                  jitter_ms: float) -> subprocess.Popen[str]:
    """This file's delayer bound to ``queue`` in ``ns``; returns once it holds the queue."""
    proc = ns.popen([sys.executable, str(Path(__file__).resolve()), "delayer",
                     str(queue), str(delay_ms), str(jitter_ms)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise LabError(f"the NFQUEUE delayer did not start in {ns.name}: {line.strip()} "
                       f"{err.strip()[-1500:]} (pip install netfilterqueue; apt "
                       "libnetfilter-queue-dev)")
    return proc


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Lab:
    """Namespaces and links that exist until :meth:`close` (or the ``with`` block ends)."""

    def __init__(self) -> None:
        require_tools()
        sweep_stale()
        self.token = secrets.token_hex(3)
        self.prefix = f"{PREFIX}-{os.getpid()}-{self.token}"
        self.namespaces: list[Namespace] = []
        self.links: list[Link] = []
        self.root = Namespace(self, None, "root")
        self._tables: list[tuple[Namespace, str, str]] = []
        self._queue = 0
        self._closed = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_queue(self) -> int:
        self._queue += 1
        return self._queue

    def namespace(self, role: str) -> Namespace:
        """A new namespace with its loopback up; ``role`` is for humans (a-z, 0-9, -)."""
        if not re.fullmatch(r"[a-z0-9-]{1,20}", role):
            raise ValueError(f"bad role name {role!r}")
        ns = Namespace(self, f"{self.prefix}-{role}-{len(self.namespaces)}", role)
        _run(["ip", "netns", "add", str(ns.name)])
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def link(self, a: Namespace, b: Namespace, *, subnet: str | None = None) -> Link:
        """A veth pair between ``a`` and ``b`` (either may be ``lab.root``), addressed
        ``X.1`` on ``a`` and ``X.2`` on ``b`` in ``subnet`` (``"10.77.N"``, N the link's
        index, by default)."""
        index = len(self.links)
        base = subnet or f"10.77.{index}"
        # device names carry the token: unique even in the root namespace (15 chars max)
        dev_a, dev_b = f"{self.token}l{index}a", f"{self.token}l{index}b"
        create = ["link", "add", dev_a, "type", "veth", "peer", "name", dev_b]
        if b.name is not None:
            create += ["netns", b.name]
        a.ip(*create)
        link = Link(Endpoint(a, dev_a, f"{base}.1"), Endpoint(b, dev_b, f"{base}.2"))
        self.links.append(link)
        for end in link.ends():
            end.link = link
            end.ns.ip("addr", "add", f"{end.ip}/24", "dev", end.dev)
            end.ns.ip("link", "set", end.dev, "up")
        return link

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for ns in [self.root, *self.namespaces]:
            ns.stop_processes()
        for link in self.links:
            for end in link.ends():
                end.stop()
        for ns, family, table in self._tables:
            if ns.name is None:  # root: the table outlives the devices, delete it
                ns.run(["nft", "delete", "table", family, table], check=False)
        for link in self.links:
            if link.a.ns.name is None and link.b.ns.name is None:
                _run(["ip", "link", "del", link.a.dev], check=False)
        for ns in self.namespaces:
            result = _run(["ip", "netns", "del", str(ns.name)], check=False)
            if result.returncode != 0:
                errors.append(result.stderr.strip())
        if errors:
            raise LabError(f"could not remove namespaces: {errors}")


def sweep_stale() -> None:
    """Remove the namespaces of labs whose process is gone (killed before closing)."""
    listing = _run(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        found = _NAME.match(name)
        if found and not _alive(int(found.group(1))):
            _run(["ip", "netns", "del", name], check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------- topologies


@dataclass
class Star:
    """A server namespace with one link to each client namespace (``links[role]``; the
    client's end is ``.b``, so its downlink is ``.a``'s egress and its uplink ``.b``'s)."""

    server: Namespace
    clients: dict[str, Namespace] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)

    def downlink(self, role: str) -> Endpoint:
        return self.links[role].a

    def uplink(self, role: str) -> Endpoint:
        return self.links[role].b


def star(lab: Lab, roles: Sequence[str]) -> Star:
    topology = Star(lab.namespace("server"))
    for role in roles:
        client = lab.namespace(role)
        topology.clients[role] = client
        topology.links[role] = lab.link(topology.server, client)
    return topology


@dataclass
class NatSite:
    """A client behind its own masquerading router: ``wan`` is the router's link to the
    public namespace (the router's public address is ``wan.b.ip``), ``lan`` the client's
    link to the router (the client is ``lan.b``)."""

    router: Namespace
    client: Namespace
    wan: Link
    lan: Link


@dataclass
class NatTopology:
    public: Namespace  # the internet and the public server in one: it routes between sites
    sites: list[NatSite]


def nat_topology(lab: Lab, sites: int = 2, *, fully_random: bool = False) -> NatTopology:
    """``sites`` clients, each behind a NAT router, and a public namespace (run the server
    there, listening on 0.0.0.0) that routes between the routers' public addresses, so
    clients reach the server and, if their NATs let them, each other."""
    public = lab.namespace("public")
    public.enable_forwarding()
    built: list[NatSite] = []
    for index in range(sites):
        router = lab.namespace(f"router{index}")
        client = lab.namespace(f"client{index}")
        wan = lab.link(public, router, subnet=f"203.0.{113 + index}")
        lan = lab.link(router, client, subnet=f"192.168.{index + 1}")
        router.enable_forwarding()
        router.default_route(wan.a.ip)
        client.default_route(lan.a.ip)
        router.masquerade(wan.b, fully_random=fully_random)
        built.append(NatSite(router, client, wan, lan))
    return NatTopology(public, built)


# ---------------------------------------------------------------------- the delayer


def delayer(queue: int, delay_ms: float, jitter_ms: float) -> None:
    """Hold each queued packet for delay +/- jitter (uniform, so packets reorder) and
    accept it when due. Runs until SIGTERM; prints ``ready`` once it holds the queue."""
    from netfilterqueue import NetfilterQueue

    held: list[tuple[float, int, Any]] = []
    count = 0

    def on_packet(packet: Any) -> None:
        nonlocal count
        count += 1
        wait = max(0.0, delay_ms + random.uniform(-jitter_ms, jitter_ms)) / 1000
        heapq.heappush(held, (time.monotonic() + wait, count, packet))

    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    nfq = NetfilterQueue()
    nfq.bind(queue, on_packet, max_len=20_000)
    fd = nfq.get_fd()
    print("ready", flush=True)
    try:
        while not stop:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else 0.5
            with contextlib.suppress(InterruptedError):
                readable, _, _ = select.select([fd], [], [], timeout)
                if readable:
                    nfq.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                heapq.heappop(held)[2].accept()
    finally:
        for _, _, packet in held:  # let what is held go rather than lose it
            with contextlib.suppress(Exception):
                packet.accept()
        nfq.unbind()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "delayer":
        delayer(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(f"usage: {sys.argv[0]} delayer QUEUE DELAY_MS JITTER_MS")
