"""The ``forge`` nemesis: hostile packets from an address that is no member's (issue 14).

During its window a sender thread bound to ``127.0.K.99`` (the cluster's loopback block, a host
no node has) sends, to every node, in a seeded random mix:

- **gossip datagrams**: random bytes; a bare ``Refuse``; claims about members at huge
  incarnations (alive, suspect and dead, 2^32-1 and 2^64-1) and about invented members; the same
  claims sealed with a secret the cluster does not hold; and **replays** of datagrams sealed with
  the real cluster secret, built once as if captured on the wire (the first window's captures are
  stale by the later ones, so both the replay cache and the freshness window are exercised);
- **gossip TCP push-pull frames**: a huge length prefix, garbage, 1,106 invented members;
- **RPC connections**: a 64 MiB length prefix, a handshake answer with a bad proof, garbage, and
  connections that never finish the handshake (held until the window ends).

To see whether the forgeries blunt failure detection, each window also SIGSTOPs one node and
measures how long until every other node's ``/v1/cluster`` stops calling it alive; the node is
resumed once all have (or at a deadline). ``report()`` is the run's ``forge`` checker: valid when
every detection came within the SWIM bound (``failure_detection_bound`` plus polling slack) and
every node answered ``/v1/cluster`` throughout.

The packet formats come from the code under test (``spine.core.swim_messages``, and
``spine.core.swim_auth`` for the sealed envelope when it exists), so the forgeries stay
structurally plausible as the wire format changes.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from spine.core import swim_messages as sm
from spine.core.swim_config import SwimConfig, failure_detection_bound

if TYPE_CHECKING:
    from jepsen_style.cluster import JepsenCluster

FORGE_HOST_OCTET = 99  # 127.0.K.99: inside the cluster's block, above every node's address
FAKE_MEMBERS = 1106  # the count of forged members accepted into gossip
POLL_S = 0.2
SLACK_S = 3.0  # polling, an HTTP round trip and a loaded 2-core box on top of the SWIM bound
TICK_S = 0.05


def forge_host(cluster: JepsenCluster) -> str:
    """The non-member address the forgeries come from."""
    a, b, c, _ = next(iter(cluster.hosts.values())).split(".")
    return f"{a}.{b}.{c}.{FORGE_HOST_OCTET}"


def detection_bound(cluster: JepsenCluster) -> float:
    """Seconds from a node's failure to every peer's verdict, by the cluster's gossip config."""
    g = cluster.config.get("gossip", {}) if isinstance(cluster.config, dict) else {}
    cfg = SwimConfig(protocol_period=g.get("protocol_period_ms", 500) / 1000,
                     suspicion_mult=g.get("suspicion_mult", 4))
    return failure_detection_bound(cfg, len(cluster.names)) + SLACK_S


def _member(node: str, address: str, inc: int, state: sm.MemberState) -> sm.Member:
    return sm.Member(node, address, inc, state, sm.meta_of({}))


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


class Sealer:
    """Seals a gossip message as a member would (``swim_auth``), or returns it bare where the
    code under test has no envelope. ``wrong_key=True``: sealed with a secret the cluster does
    not hold."""

    def __init__(self, secret: str) -> None:
        try:
            from spine.core.swim_auth import Channel, GossipAuth
        except ImportError:  # gossip before issue 14: no envelope at all
            self._auth: Any = None
            self._wrong: Any = None
            self._channel: Any = None
            return
        self._auth = GossipAuth([secret], window_ms=60_000)
        self._wrong = GossipAuth(["not-the-cluster-secret-" + secret[:4]], window_ms=60_000)
        self._channel = Channel

    @property
    def enveloped(self) -> bool:
        return self._auth is not None

    def datagram(self, payload: bytes, *, wrong_key: bool = False) -> bytes:
        auth = self._wrong if wrong_key else self._auth
        if auth is None:
            return payload
        return bytes(auth.seal(self._channel.DATAGRAM, payload, time.time_ns() // 1_000_000))

    def request(self, payload: bytes, *, wrong_key: bool = False) -> bytes:
        auth = self._wrong if wrong_key else self._auth
        if auth is None:
            return payload
        return bytes(auth.seal(self._channel.REQUEST, payload, time.time_ns() // 1_000_000))


@dataclass
class Forger:
    """Builds and sends the forgeries; one per fault, so captures survive across windows."""

    cluster: JepsenCluster
    sealer: Sealer
    host: str
    secret: str = ""
    captured: list[tuple[str, bytes]] = field(default_factory=list)  # (node, sealed datagram)
    captured_push_pull: bytes = b""  # a member's sealed push-pull request, framed
    captured_auth: bytes = b""  # a member's handshake answer to an earlier challenge, framed
    sent: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # two sender threads count

    def _count(self, kind: str) -> None:
        with self._lock:
            self.sent[kind] = self.sent.get(kind, 0) + 1

    def gossip_addr(self, node: str) -> tuple[str, int]:
        return self.cluster.host(node), self.cluster.gossip_port(node)

    def capture(self, rng: random.Random) -> None:
        """Seal a few real-looking datagrams now, to replay later (a passive wiretap)."""
        names = self.cluster.names
        for _ in range(4):
            src, dst = rng.sample(names, 2) if len(names) > 1 else (names[0], names[0])
            about = rng.choice(names)
            addr = "{}:{}".format(*self.gossip_addr(about))
            up = sm.Update(_member(about, addr, 1, sm.MemberState.ALIVE), about)
            msg = sm.Ping(rng.randrange(1, 2**31), src, dst, (up,))
            self.captured.append((dst, self.sealer.datagram(sm.encode(msg))))
        members = tuple(_member(n, "{}:{}".format(*self.gossip_addr(n)), 1, sm.MemberState.ALIVE)
                        for n in names)
        pp = sm.PushPull(rng.choice(names), members, False)
        self.captured_push_pull = _frame(self.sealer.request(sm.encode(pp)))
        self.captured_auth = self._capture_auth(rng)

    def _capture_auth(self, rng: random.Random) -> bytes:
        """A member's valid answer to one node's handshake challenge, as a wiretap would have
        seen it: replayed on a new connection it answers a challenge the server no longer
        asks. Empty if the node did not answer."""
        names = self.cluster.names
        node = rng.choice(names)
        client = rng.choice([n for n in names if n != node] or names)
        s = _connect(self.host, (self.cluster.host(node), self.cluster.rpc_port(node)))
        if s is None:
            return b""
        with s:
            hello = _read_plain(s)
        if not isinstance(hello, list):
            return b""
        return _frame(_msgpack(_auth_answer(hello, self.secret, client, rng.randbytes(32))))

    def claim(self, rng: random.Random) -> bytes:
        """A forged piggybacked claim: a member (or an invented one) alive, suspect or dead at
        an incarnation past any real one."""
        names = self.cluster.names
        who = rng.choice([*names, f"forged-{rng.randrange(FAKE_MEMBERS)}"])
        addr = (f"{self.host}:{rng.randrange(1024, 65535)}" if who.startswith("forged")
                else "{}:{}".format(*self.gossip_addr(who)))
        state = rng.choice([sm.MemberState.ALIVE, sm.MemberState.SUSPECT, sm.MemberState.DEAD])
        inc = rng.choice([2**32 - 1, 2**64 - 1, 2**31])
        by = rng.choice(names)
        up = sm.Update(_member(who, addr, inc, state), by)
        msg = sm.Ping(rng.randrange(1, 2**31), by, rng.choice(names), (up,))
        return _encode_unchecked(msg)

    def datagram(self, rng: random.Random) -> tuple[str, bytes]:
        kind = rng.choice(["random", "refuse", "claim", "claim-wrong-key", "replay"])
        if kind == "replay" and not self.captured:
            kind = "claim"
        self._count(f"udp-{kind}")
        node = rng.choice(self.cluster.names)
        if kind == "random":
            return node, rng.randbytes(rng.randrange(1, 200))
        if kind == "refuse":
            return node, sm.encode(sm.Refuse(rng.choice(self.cluster.names), "forged"))
        if kind == "claim":
            return node, self.claim(rng)
        if kind == "claim-wrong-key":
            return node, self.sealer.datagram(self.claim(rng), wrong_key=True)
        return rng.choice(self.captured)

    def send_datagram(self, sock: socket.socket, rng: random.Random) -> None:
        node, data = self.datagram(rng)
        with contextlib.suppress(OSError):
            sock.sendto(data, self.gossip_addr(node))

    def push_pull(self, rng: random.Random) -> bytes:
        kind = rng.choice(["huge-length", "garbage", "fake-members", "fake-members-wrong-key",
                           "replay"])
        self._count(f"tcp-gossip-{kind}")
        if kind == "replay":
            return self.captured_push_pull or _frame(b"")
        if kind == "huge-length":
            return struct.pack(">I", 0xFFFFFFF0) + rng.randbytes(64)
        if kind == "garbage":
            return _frame(rng.randbytes(rng.randrange(1, 512)))
        members = tuple(
            _member(f"forged-{i}", f"{self.host}:{10000 + i}", 1, sm.MemberState.ALIVE)
            for i in range(FAKE_MEMBERS))
        body = sm.encode(sm.PushPull(rng.choice(self.cluster.names), members, False))
        return _frame(self.sealer.request(body, wrong_key=kind.endswith("wrong-key")))

    def rpc(self, rng: random.Random, held: list[socket.socket]) -> None:
        """One hostile RPC connection to a random node."""
        kind = rng.choice(["huge-length", "bad-proof", "garbage", "hold", "replayed-auth"])
        self._count(f"rpc-{kind}")
        node = rng.choice(self.cluster.names)
        s = _connect(self.host, (self.cluster.host(node), self.cluster.rpc_port(node)))
        if s is None:
            self._count("rpc-refused-connect")
            return
        try:
            if kind == "hold":
                if len(held) < 8:  # a few half-open handshakes, closed at the window's end
                    held.append(s)
                    s = None
                return
            if kind == "replayed-auth":
                _read_plain(s)  # a fresh challenge, answered with the captured response
                s.sendall(self.captured_auth or _frame(b""))
            elif kind == "huge-length":
                s.sendall(struct.pack(">I", 64 * 1024 * 1024) + rng.randbytes(1024))
            elif kind == "garbage":
                s.sendall(rng.randbytes(rng.randrange(1, 2048)))
            else:
                auth = [2, 1, rng.choice(self.cluster.names), rng.randbytes(32),
                        rng.randbytes(32)]
                s.sendall(_frame(_msgpack(auth)))
            with contextlib.suppress(OSError):
                s.recv(4096)
        except OSError:
            self._count("rpc-reset")
        finally:
            if s is not None:
                s.close()

    def send_push_pull(self, rng: random.Random) -> None:
        node = rng.choice(self.cluster.names)
        s = _connect(self.host, self.gossip_addr(node))
        if s is None:
            self._count("tcp-gossip-refused-connect")
            return
        with s, contextlib.suppress(OSError):
            s.sendall(self.push_pull(rng))
            s.recv(4096)


def _msgpack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def _read_plain(s: socket.socket, limit: int = 4096) -> Any:
    """One length-prefixed msgpack frame (an RPC handshake frame); None if there is none."""
    try:
        head = s.recv(4, socket.MSG_WAITALL)
        if len(head) < 4 or struct.unpack(">I", head)[0] > limit:
            return None
        return msgpack.unpackb(s.recv(struct.unpack(">I", head)[0], socket.MSG_WAITALL))
    except (OSError, ValueError):
        return None


def _auth_answer(hello: list[Any], secret: str, client: str, client_nonce: bytes) -> list[Any]:
    """What member `client` answers to `hello` (the server's challenge), in the handshake of
    the code under test: the mutual one (`rpc_handshake`), or the earlier HMAC over the nonce."""
    try:
        from spine.cluster import rpc_handshake as hs
    except ImportError:  # 0d917e7: [version, nonce, server id] -> [version, id, HMAC(nonce+id)]
        import hashlib
        import hmac

        nonce = hello[1] if len(hello) > 1 and isinstance(hello[1], bytes) else b""
        mac = hmac.new(secret.encode(), nonce + client.encode(), hashlib.sha256).digest()
        return [hello[0], client, mac]
    _, _, server_nonce, server_id = (hello + [None] * 4)[:4]
    if not isinstance(server_nonce, bytes) or not isinstance(server_id, str):
        return []
    tr = hs.transcript(server_id, client, server_nonce, client_nonce)
    return [hs.HANDSHAKE_VERSION, hs.PROTOCOL_VERSION, client, client_nonce,
            hs.proof(hs.root_key(secret), "client", tr)]


def _encode_unchecked(msg: sm.Message) -> bytes:
    """`encode`, for values the encoder may have learnt to refuse (a forger does not ask)."""
    ups = [[u.member.node_id, u.member.address, u.member.incarnation, u.member.state.value,
            dict(u.member.meta), u.by] for u in getattr(msg, "updates", ())]
    assert isinstance(msg, sm.Ping)
    return bytes((sm.Tag.PING,)) + _msgpack([msg.seq, msg.sender, msg.target, ups])


def _connect(host: str, addr: tuple[str, int], timeout: float = 1.0) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((host, 0))
        s.connect(addr)
    except OSError:
        s.close()
        return None
    return s


@dataclass
class ForgeFault:
    """Forged and replayed gossip and RPC packets from a non-member address, while one node is
    paused to time failure detection."""

    cluster: JepsenCluster
    name: str = "forge"
    bound_s: float = 0.0
    detections: list[dict[str, Any]] = field(default_factory=list)
    view_errors: list[str] = field(default_factory=list)
    _forger: Forger | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _victim: str | None = None
    _active: bool = False
    windows: int = 0

    def __post_init__(self) -> None:
        self.bound_s = detection_bound(self.cluster) if self.cluster.config else 0.0

    def plan(self, rng: random.Random) -> dict[str, Any]:
        return {"seed": rng.randrange(2**31), "victim": rng.choice(self.cluster.names),
                "from": forge_host(self.cluster)}

    def start(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        if not self.bound_s:
            self.bound_s = detection_bound(self.cluster)
        rng = random.Random(int(plan["seed"]))
        if self._forger is None:
            secret = str(self.cluster.config["cluster"]["secret"])
            self._forger = Forger(self.cluster, Sealer(secret), str(plan["from"]), secret)
            self._forger.capture(random.Random(rng.random()))
        self._stop.clear()
        self._active = True
        self.windows += 1
        self._threads = [
            threading.Thread(target=self._send_udp, args=(rng.random(),), daemon=True,
                             name="forge-udp"),
            threading.Thread(target=self._send_tcp, args=(rng.random(),), daemon=True,
                             name="forge-tcp"),
            threading.Thread(target=self._detect, args=(str(plan["victim"]),), daemon=True,
                             name="forge-detect"),
        ]
        for t in self._threads:
            t.start()
        return {**plan, "bound_s": round(self.bound_s, 2),
                "enveloped": self._forger.sealer.enveloped}

    def _send_udp(self, seed: float) -> None:
        forger = self._forger
        assert forger is not None
        rng = random.Random(seed)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((forger.host, 0))
            while not self._stop.wait(TICK_S):
                for _ in range(len(self.cluster.names)):
                    forger.send_datagram(udp, rng)

    def _send_tcp(self, seed: float) -> None:
        """Push-pull frames and RPC connections, alternately (each may wait up to 1 s for an
        answer, so they run beside the datagrams, not in their loop)."""
        forger = self._forger
        assert forger is not None
        rng = random.Random(seed)
        held: list[socket.socket] = []
        try:
            while not self._stop.wait(TICK_S):
                forger.send_push_pull(rng)
                if self._stop.is_set():
                    break
                forger.rpc(rng, held)
        finally:
            for s in held:
                s.close()

    def _alive_somewhere(self, victim: str, observers: list[str]) -> list[str]:
        still = []
        for n in observers:
            try:
                status, body, _ = self.cluster.http(n, "GET", "/v1/cluster", timeout=2.0)
            except Exception as e:  # no answer in 2 s from a node that is not paused
                self.view_errors.append(f"{n}: {e!r}"[:300])
                still.append(n)
                continue
            if status in (429, 503):  # overloaded: ask again at the next poll
                still.append(n)
                continue
            if status != 200 or not isinstance(body, dict):
                self.view_errors.append(f"{n}: /v1/cluster answered {status}")
                still.append(n)
                continue
            if any(m.get("id") == victim and m.get("alive") for m in body.get("members", [])):
                still.append(n)
        return still

    def _detect(self, victim: str) -> None:
        """Pause `victim`, time until no other node calls it alive, resume it."""
        observers = [n for n in self.cluster.names if n != victim]
        if not observers or not self.cluster.is_running(victim):
            return
        deadline_s = self.bound_s + 10.0
        self.cluster.pause(victim)
        self._victim = victim
        began = time.monotonic()
        still = observers
        try:
            while still and time.monotonic() - began < deadline_s:
                time.sleep(POLL_S)
                still = self._alive_somewhere(victim, observers)
        finally:
            took = time.monotonic() - began
            self.cluster.resume(victim)
            self._victim = None
        self.detections.append({"victim": victim, "detected": not still,
                                "seconds": round(took, 2), "undetected_by": still})

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.bound_s + 15.0)
        self._threads = []
        if self._victim is not None:
            self.cluster.resume(self._victim)
            self._victim = None
        self._active = False
        forger = self._forger
        return {"sent": dict(forger.sent) if forger else {},
                "detection": self.detections[-1] if self.detections else None}

    @property
    def active(self) -> bool:
        return self._active

    def report(self) -> dict[str, Any] | None:
        """The run's ``forge`` checker result; None if no forge window began (a short ``all``
        schedule may end before forge's turn: nothing was measured, nothing to judge)."""
        if not self.windows:
            return None
        late = [d for d in self.detections if not d["detected"] or d["seconds"] > self.bound_s]
        valid = bool(self.detections) and not late and not self.view_errors
        worst = max((d["seconds"] for d in self.detections), default=None)
        if not self.detections:
            summary = "no forge window completed a detection"
        elif late:
            summary = f"{len(late)} of {len(self.detections)} failures detected late or never"
        elif self.view_errors:
            summary = f"/v1/cluster failed {len(self.view_errors)} times under forgery"
        else:
            summary = f"every failure detected within {self.bound_s:.1f}s (worst {worst}s)"
        return {"valid": valid if self.detections else "unknown", "summary": summary,
                "bound_s": round(self.bound_s, 2), "worst_s": worst,
                "detections": self.detections, "view_errors": self.view_errors[:20],
                "sent": dict(self._forger.sent) if self._forger else {}}


def make_forge(cluster: JepsenCluster) -> ForgeFault:
    """The ``forge`` fault for the nemesis schedule."""
    return ForgeFault(cluster)


__all__ = ["ForgeFault", "Forger", "Sealer", "detection_bound", "forge_host", "make_forge"]
