"""E2EE benchmarks: SFrame cost per frame against SRTP in the same run, and key exchange cost.

    .venv/bin/python bench/e2ee_bench.py            # everything, one JSON object
    .venv/bin/python bench/e2ee_bench.py --quick    # fewer iterations

All figures are CPU time of this thread (time.thread_time), so other processes on a busy
machine do not inflate them. "frame" figures are protect + unprotect of one 1200-byte frame,
in microseconds: the median over rounds (each round times ``--iterations`` frames) and the
best round. The SRTP figure is protect + unprotect of one RTP packet with a 1200-byte
payload through the project's ``SrtpContext`` (libsrtp via pylibsrtp), measured in the same
process, as the reference.
"Pairing" is one SPAKE2 + X25519 key exchange between two sessions (both sides), and
"rotation" the work of a 5-person meeting to rotate after someone leaves, in memory.

    .venv/bin/python bench/e2ee_bench.py --meeting 20   # + 5-person meeting CPU, 20 s each

``--meeting`` runs a real server and five ``confero bot`` processes (320x240 synthetic video
at 30 fps, a tone each) twice, an ordinary meeting then an E2EE one, and reports each bot's
CPU (user + system, from /proc) over the same window once everyone is up, as % of a core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from confero.protocol import sframe
from confero.protocol.e2ee_keys import E2eeSession
from confero.protocol.rtp import RtpPacket
from confero.protocol.sframe import CipherSuite, SFrameContext
from confero.protocol.srtp import SrtpContext, new_master_key

MACHINE = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
FRAME_SIZE = 1200
TARGET_US = 10.0


def per_call_us(step: Callable[[], object], iterations: int, rounds: int) -> dict[str, float]:
    results = []
    for _ in range(rounds):
        start = time.thread_time_ns()
        for _ in range(iterations):
            step()
        results.append((time.thread_time_ns() - start) / iterations / 1000)
    return {"median_us": round(statistics.median(results), 2), "best_us": round(min(results), 2)}


def sframe_pair(suite: CipherSuite, iterations: int, rounds: int) -> dict[str, float]:
    sender, receiver = SFrameContext(suite), SFrameContext(suite)
    sender.add_send_key(0x1234_0001, b"k" * 32)
    receiver.add_receive_key(0x1234_0001, b"k" * 32)
    frame = os.urandom(FRAME_SIZE)

    def step() -> None:
        receiver.unprotect(sender.protect(0x1234_0001, frame))

    return per_call_us(step, iterations, rounds)


def sframe_vp8(iterations: int, rounds: int) -> dict[str, float]:
    sender, receiver = SFrameContext(), SFrameContext()
    sender.add_send_key(77, b"k" * 32)
    receiver.add_receive_key(77, b"k" * 32)
    frame = b"\x11\x02\x00" + os.urandom(FRAME_SIZE - 3)  # a delta frame

    def step() -> None:
        sframe.unprotect_vp8(receiver, sframe.protect_vp8(sender, 77, frame))

    return per_call_us(step, iterations, rounds)


def srtp_pair(iterations: int, rounds: int) -> dict[str, float]:
    key = new_master_key()
    sender, receiver = SrtpContext(key, key), SrtpContext(key, key)
    iterations = min(iterations, 60000 // rounds)  # distinct sequence numbers, no wrap
    payload = os.urandom(FRAME_SIZE)
    packets = iter(
        [
            RtpPacket(
                payload_type=96, sequence_number=n, timestamp=n * 3000, ssrc=0x1234, payload=payload
            ).serialize()
            for n in range(iterations * rounds)
        ]
    )

    def step() -> None:
        receiver.unprotect_rtp(sender.protect_rtp(next(packets)))

    return per_call_us(step, iterations, rounds)


def _pump(sessions: dict[str, E2eeSession], now: float) -> None:
    while True:
        batch = [(pid, to, blob) for pid, s in sessions.items() for to, blob in s.outgoing()]
        if not batch:
            return
        for src, to, blob in batch:
            if to in sessions:
                sessions[to].handle_blob(src, blob, now)


def key_exchange() -> dict[str, Any]:
    start = time.thread_time()
    a = E2eeSession("alice", "bench", "passphrase")
    b = E2eeSession("bob", "bench", "passphrase")
    a.on_participant_joined("bob", 0.0, initial=True)
    b.on_participant_joined("alice", 0.0)
    _pump({"alice": a, "bob": b}, 0.0)
    pairing_ms = (time.thread_time() - start) * 1000
    assert a.verified("bob") and b.verified("alice")

    sessions: dict[str, E2eeSession] = {}
    for pid in ["p1", "p2", "p3", "p4", "p5"]:
        new = E2eeSession(pid, "bench", "passphrase")
        for other in sessions:
            new.on_participant_joined(other, 0.0, initial=True)
        for session in sessions.values():
            session.on_participant_joined(pid, 0.0)
        sessions[pid] = new
        _pump(sessions, 0.0)
    start = time.thread_time()
    del sessions["p5"]
    for session in sessions.values():
        session.on_participant_left("p5", 1.0)
    _pump(sessions, 1.0)
    rotation_ms = (time.thread_time() - start) * 1000
    keys = {pid: s.send_key() for pid, s in sessions.items()}
    assert all(
        keys[pid] == (kid, sessions[other].receive_keys().get(kid))
        for pid, (kid, _) in keys.items()
        for other in sessions
        if other != pid
    ), "rotation did not reach every stayer"
    return {
        "pairing_cpu_ms_both_sides": round(pairing_ms, 1),
        "rotation_after_leave_cpu_ms_4_stayers_total": round(rotation_ms, 2),
    }


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[dict[str, Any]]:
    out: queue.Queue[dict[str, Any]] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                out.put(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()
    return out


def _wait(events: queue.Queue[dict[str, Any]], kind: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.1, deadline - time.monotonic()))
        if event.get("event") == kind:
            return event


def meeting_cpu(e2ee: bool, seconds: float, people: int = 5) -> dict[str, Any]:
    """Each bot's CPU share in one meeting of ``people``, measured over ``seconds``."""
    cli = [sys.executable, "-m", "confero.cli"]
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [*cli, "server", "--port", "0", "--media-port", "0", "--data-dir", data],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        bots: list[subprocess.Popen[str]] = []
        try:
            url = _wait(_lines(server), "listening")["url"]
            secret = ["--passphrase", "bench passphrase"] if e2ee else []
            meeting = ""
            for index in range(people):
                target = (["--create", "bench", *(["--e2ee"] if e2ee else [])] if index == 0
                          else ["--join", meeting])
                bot = subprocess.Popen(
                    [*cli, "bot", "--server", url, "--name", f"p{index}", *target, *secret,
                     "--width", "320", "--height", "240", "--audio", f"sine:{300 + 110 * index}",
                     "--no-stdin", "--duration", str(seconds + 60)],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                bots.append(bot)
                joined = _wait(_lines(bot), "joined")
                meeting = meeting or joined["meeting_id"]
            time.sleep(5)  # keys exchanged, keyframes out, buffers settled
            before = [_cpu_seconds(b.pid) for b in bots]
            start = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - start
            shares = [100 * (_cpu_seconds(b.pid) - c) / elapsed for b, c in zip(bots, before,
                                                                             strict=True)]
        finally:
            for proc in (*bots, server):
                proc.terminate()
            for proc in (*bots, server):
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return {"per_bot_percent_of_a_core": [round(s, 1) for s in shares],
            "mean_percent": round(statistics.mean(shares), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--meeting", type=float, default=0, metavar="SECONDS",
                        help="also compare a 5-person meeting's CPU per bot, plain vs E2EE")
    args = parser.parse_args()
    iterations, rounds = (500, 3) if args.quick else (args.iterations, args.rounds)
    gcm128 = sframe_pair(CipherSuite.AES_128_GCM_SHA256_128, iterations, rounds)
    result = {
        "bench": "e2ee",
        "machine": MACHINE,
        "frame_bytes": FRAME_SIZE,
        "target_us": TARGET_US,
        "sframe_aes_128_gcm_us": gcm128,
        "sframe_aes_256_gcm_us": sframe_pair(
            CipherSuite.AES_256_GCM_SHA512_128, iterations, rounds
        ),
        "sframe_aes_128_ctr_hmac_80_us": sframe_pair(
            CipherSuite.AES_128_CTR_HMAC_SHA256_80, iterations, rounds
        ),
        "sframe_vp8_partial_aes_128_gcm_us": sframe_vp8(iterations, rounds),
        "reference_srtp_protect_unprotect_us": srtp_pair(iterations, rounds),
        "meets_target": gcm128["median_us"] <= TARGET_US,
        **key_exchange(),
    }
    if args.meeting:
        plain = meeting_cpu(False, args.meeting)
        secret = meeting_cpu(True, args.meeting)
        result["meeting_5_people"] = {
            "seconds": args.meeting, "ordinary": plain, "e2ee": secret,
            "e2ee_extra_percent_of_a_core": round(secret["mean_percent"]
                                                  - plain["mean_percent"], 1),
            "target_extra_percent": 10,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
