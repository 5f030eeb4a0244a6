"""Bandwidth probing (issue 9): a sender pushed down finds its way back up when the link
recovers, within seconds instead of the tens of seconds the delay-based increase needs."""

from __future__ import annotations

from confero.protocol.probe import ProbeOutcome, Prober
from confero.protocol.twcc import PacketResult
from tests.memnet import Client, Datagram, MemoryNetwork
from tests.test_endpoint import audio_sender, video_sender

TICK = 0.02


def run_probe(prober: Prober, link_bps: float, *, media_bps: float = 300_000,
              estimate: float = 300_000, wanted: float = 3_000_000,
              start: float = 0.0) -> tuple[ProbeOutcome | None, float]:
    """Media at ``media_bps`` plus whatever padding the prober asks for, through a FIFO
    served at ``link_bps``; feedback on everything once it has arrived. Returns the
    probe's outcome and when it came."""
    now, busy, seq = start, start, 0
    results: list[PacketResult] = []
    media_per_tick = int(media_bps * TICK / 8)
    while now < start + 5.0:
        padding = prober.padding(now, estimate_bps=estimate, wanted_bps=wanted, quiet=True,
                                 tick=TICK)
        sizes = [media_per_tick, *padding]
        for size in sizes:
            seq += 1
            prober.on_sent(seq, size, now)
            busy = max(busy, now) + size * 8 / link_bps
            results.append(PacketResult(seq, size, now, busy + 0.02))
        now = round(now + TICK, 9)
        due = [r for r in results if r.arrival_time is not None and r.arrival_time <= now]
        results = [r for r in results if r not in due]
        outcome = prober.on_results(due, now)
        if outcome is not None:
            return outcome, now
    return None, now


def test_a_link_that_carries_more_lets_the_probe_through_at_its_rate() -> None:
    prober = Prober()
    outcome, _ = run_probe(prober, link_bps=5_000_000)
    assert outcome is not None and outcome.succeeded
    assert 500_000 <= outcome.estimate_bps() <= 700_000  # 2 x the estimate, measured
    assert prober.padding_packets > 0 and prober.succeeded == 1


def test_a_full_link_fails_the_probe_and_the_wait_doubles() -> None:
    prober = Prober()
    outcome, at = run_probe(prober, link_bps=400_000)
    assert outcome is not None and not outcome.succeeded
    assert 300_000 <= outcome.received_bps <= 450_000  # the link's own rate
    second, at2 = run_probe(prober, link_bps=400_000, start=at)
    assert second is not None and not second.succeeded
    assert at2 - at >= 2 * prober.interval - TICK  # backed off


def test_no_probe_while_the_estimate_gives_all_that_is_wanted_or_the_link_is_busy() -> None:
    prober = Prober()
    for step in range(200):
        now = step * TICK
        assert prober.padding(now, estimate_bps=1_000_000, wanted_bps=1_100_000,
                              quiet=True, tick=TICK) == []
        assert prober.padding(now, estimate_bps=300_000, wanted_bps=3_000_000,
                              quiet=False, tick=TICK) == []
    assert prober.probes == 0


# ---------------------------------------------------------------- through the real router


def bottleneck(capacity: list[float], queue: float = 0.1):  # type: ignore[no-untyped-def]
    """A downlink served at ``capacity[0]`` bit/s (changeable) with ``queue`` seconds of
    buffer (tail drop): what a capped home link does."""
    busy = [0.0]
    clock: list[float] = [0.0]

    def fate(datagram: Datagram) -> list[float]:
        now = datagram.sent_at
        start = max(now, busy[0])
        if start - now > queue:
            return []
        busy[0] = start + (len(datagram.data) + 28) * 8 / capacity[0]
        clock[0] = now
        return [busy[0] - now]

    return fate


def test_the_servers_estimate_of_a_recovered_link_climbs_back_within_seconds() -> None:
    """Bob's downlink drops to 300 kbit/s, then back to 3 Mbit/s. Alice sends 1.2 Mbit/s.
    With probing the server's estimate of bob's link is back above 1 Mbit/s within 6 s of
    the recovery; it would take the delay-based increase alone far longer (it may only
    rise to 1.5 x what bob acknowledges, and bob gets only the layers that fit)."""
    net = MemoryNetwork()
    alice = net.join("alice")
    bob: Client = net.join("bob")
    capacity = [3_000_000.0]
    bob.downlink = bottleneck(capacity)
    video, talk = video_sender(alice, size=5000), audio_sender(alice)  # 1.2 Mbit/s

    def send(now: float) -> None:
        video(now)
        talk(now)  # the mix flows beside the probes, each on its own SSRC

    net.run(4.0, each=send)
    capacity[0] = 300_000
    net.run(12.0, each=send)
    downlink = net.router._peers["bob"].downlink
    assert downlink.target_bps < 450_000  # adapted down
    capacity[0] = 3_000_000
    net.run(18.0, each=send)
    assert downlink.target_bps > 1_000_000
    assert downlink.probes_raised >= 1
    assert net.router.counters["probe_packets"] > 0
    assert bob.endpoint.counters["probe_packets"] > 0  # counted, not taken for media
    assert bob.endpoint.audio_stats.lost < 200  # the mix lost only in the 300 kbit/s spell
