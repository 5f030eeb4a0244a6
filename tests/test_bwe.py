"""Send-side bandwidth estimation: each stage on synthetic input, then end to end through a
simulated bottleneck (tests/netsim.py) on a fake clock. All times are simulated seconds."""

from __future__ import annotations

import pytest

from confero.protocol.bwe import (
    AckedBitrateEstimator,
    AimdRateController,
    GroupDelta,
    InterArrival,
    LossBasedController,
    OveruseDetector,
    SendSideBwe,
    TrendlineEstimator,
    Usage,
)
from confero.protocol.twcc import PacketResult
from tests.netsim import CallSim, Link

# -- inter-arrival grouping ----------------------------------------------------------------


def test_packets_within_five_ms_of_send_form_one_group() -> None:
    ia = InterArrival()
    deltas = []
    # three groups: sent at 0-4 ms, 20-24 ms, 40-44 ms; the path adds 1 ms per group
    for g in range(3):
        for k in range(5):
            send = g * 0.020 + k * 0.001
            delta = ia.on_packet(send, 10 + send + g * 0.001, 1000)
            if delta is not None:
                deltas.append(delta)
    delta = ia.on_packet(0.060, 10.063, 1000)  # opens a fourth group, completing the third
    assert delta is not None
    deltas.append(delta)
    assert len(deltas) == 2  # (group 1 vs 0) and (group 2 vs 1)
    for d in deltas:
        assert d.send_delta == pytest.approx(0.020)
        assert d.arrival_delta == pytest.approx(0.021)


def test_reordered_old_packet_is_ignored() -> None:
    ia = InterArrival()
    ia.on_packet(0.0, 1.0, 100)
    ia.on_packet(0.02, 1.02, 100)
    assert ia.on_packet(0.01, 1.03, 100) is None  # sent before the current group began
    assert ia.reordered == 1


def test_arrival_burst_joins_the_group() -> None:
    """Packets released together by a queue (arriving < 5 ms apart, delay shrinking)
    are one group even if they were sent further apart."""
    ia = InterArrival()
    assert ia.on_packet(0.000, 1.100, 100) is None
    assert ia.on_packet(0.010, 1.102, 100) is None  # 10 ms later sent, 2 ms later arrived
    assert ia.on_packet(0.020, 1.104, 100) is None
    delta = ia.on_packet(0.200, 1.300, 100)
    assert delta is None  # only one complete group so far: no delta yet


def test_stall_resets_instead_of_teaching_the_filter() -> None:
    ia = InterArrival()
    ia.on_packet(0.0, 1.0, 100)
    ia.on_packet(0.02, 1.02, 100)
    assert ia.on_packet(0.04, 5.0, 100) is not None  # completes group 2 normally
    assert ia.on_packet(0.06, 5.02, 100) is None  # 4 s of extra delay: not a delta


# -- trendline and detector ------------------------------------------------------------


def _feed_trend(trend: TrendlineEstimator, extra_per_group: float, n: int = 40) -> float:
    modified = 0.0
    for i in range(n):
        modified = trend.update(GroupDelta(0.01, 0.01 + extra_per_group, 1 + i * 0.01))
    return modified


def test_trend_is_flat_for_constant_delay_and_positive_for_a_growing_queue() -> None:
    flat = TrendlineEstimator()
    assert _feed_trend(flat, 0.0) == pytest.approx(0.0, abs=1e-9)
    growing = TrendlineEstimator()
    modified = _feed_trend(growing, 0.001)  # 1 ms more queue every 10 ms
    assert growing.trend == pytest.approx(0.1, rel=0.25)
    assert modified > 12.5
    draining = TrendlineEstimator()
    assert _feed_trend(draining, -0.001) < -12.5


def test_detector_needs_sustained_overuse() -> None:
    det = OveruseDetector()
    assert det.detect(50.0, 0.1, 0.005, 0.0) is Usage.NORMAL  # one sample is not enough
    assert det.detect(50.0, 0.1, 0.005, 0.005) is Usage.NORMAL  # 7.5 ms over
    assert det.detect(50.0, 0.1, 0.005, 0.010) is Usage.OVERUSING
    assert det.detect(0.0, 0.0, 0.005, 0.015) is Usage.NORMAL
    assert det.detect(-50.0, -0.1, 0.005, 0.020) is Usage.UNDERUSING


def test_detector_ignores_a_falling_trend() -> None:
    det = OveruseDetector()
    det.detect(50.0, 0.2, 0.01, 0.0)
    assert det.detect(50.0, 0.1, 0.01, 0.01) is Usage.NORMAL  # above, but getting better


def test_threshold_adapts_slowly_up_and_faster_down_within_bounds() -> None:
    det = OveruseDetector()
    for i in range(100):  # 10 s of a trend a bit above the threshold
        det.detect(det.threshold + 5, 0.0, 0.1, i * 0.1)
    up = det.threshold
    assert 12.5 < up <= 600
    det2 = OveruseDetector()
    det2.detect(0.0, 0.0, 0.1, 0.0)
    det2.detect(0.0, 0.0, 0.1, 0.1)
    # one 100 ms step down moves k_down * 100 = 3.9 x the gap: clamped at the floor
    assert det2.threshold == 6.0
    det3 = OveruseDetector()
    det3.detect(0.0, 0.0, 0.1, 0.0)
    det3.detect(500.0, 0.0, 0.1, 0.1)  # a spike far above: ignored by the adaptation
    assert det3.threshold == 12.5


# -- acknowledged bitrate ------------------------------------------------------------------


def test_acked_bitrate_measures_delivery_rate() -> None:
    acked = AckedBitrateEstimator(window=0.5)
    assert acked.bitrate_bps is None
    for i in range(50):  # 1000 bytes every 8 ms = 1 Mbit/s
        acked.on_packet(i * 0.008, 1000)
    assert acked.bitrate_bps is not None
    assert acked.bitrate_bps == pytest.approx(1_000_000, rel=0.05)
    for i in range(50, 200):  # then half that
        acked.on_packet(i * 0.016 - 50 * 0.008, 1000)
    assert acked.bitrate_bps == pytest.approx(500_000, rel=0.05)


# -- AIMD -------------------------------------------------------------------------------


def _aimd(**kw: float) -> AimdRateController:
    return AimdRateController(1_000_000, min_bps=50_000, max_bps=10_000_000, **kw)


def test_multiplicative_increase_far_from_capacity() -> None:
    aimd = _aimd(increase_per_s=0.08)
    for i in range(11):  # 1 s of normal feedback every 100 ms
        aimd.update(Usage.NORMAL, None, i * 0.1)
    assert aimd.bitrate_bps == pytest.approx(1_080_000, rel=0.01)


def test_overuse_backs_off_to_beta_times_acked_then_creeps_additively() -> None:
    aimd = _aimd(increase_per_s=0.3)
    aimd.update(Usage.OVERUSING, 800_000, 0.0)
    assert aimd.bitrate_bps == pytest.approx(0.85 * 800_000)
    assert aimd.link.estimate_kbps == pytest.approx(800)
    lower = aimd.link.lower_bps()
    assert 0.85 * 800_000 < lower < 800_000
    for i in range(1, 11):  # 1 s: well below the capacity estimate, multiply back up
        aimd.update(Usage.NORMAL, 800_000, i * 0.1)
    assert aimd.bitrate_bps >= lower
    start = aimd.bitrate_bps
    for i in range(11, 21):  # 1 s near it: about half a packet per RTT + 100 ms
        aimd.update(Usage.NORMAL, 800_000, i * 0.1)
    gained = aimd.bitrate_bps - start
    assert 4_000 < gained < 0.05 * start


def test_increase_is_capped_by_what_gets_through() -> None:
    aimd = _aimd(increase_per_s=1.0)
    for i in range(30):
        aimd.update(Usage.NORMAL, 200_000, i * 0.1)
    assert aimd.bitrate_bps <= 1.5 * 200_000 + 10_000 or aimd.bitrate_bps == 1_000_000
    assert aimd.bitrate_bps == 1_000_000  # never lowered by the cap, only not raised


def test_underuse_holds_and_rate_is_clamped() -> None:
    aimd = AimdRateController(100_000, min_bps=80_000, max_bps=120_000)
    aimd.update(Usage.UNDERUSING, None, 0.0)
    aimd.update(Usage.UNDERUSING, None, 5.0)
    assert aimd.bitrate_bps == 100_000
    for i in range(50):
        aimd.update(Usage.NORMAL, None, 5.0 + i * 0.1)
    assert aimd.bitrate_bps == 120_000
    aimd.update(Usage.OVERUSING, 10_000, 20.0)
    assert aimd.bitrate_bps == 80_000


def test_reduce_at_most_once_per_rtt_unless_far_off() -> None:
    aimd = _aimd()
    aimd.rtt = 0.1
    aimd.update(Usage.OVERUSING, 1_000_000, 0.0)
    assert not aimd.time_to_reduce_further(0.05, 800_000)
    assert aimd.time_to_reduce_further(0.05, 300_000)  # delivery collapsed: do not wait
    assert aimd.time_to_reduce_further(0.1, 800_000)


# -- loss-based ----------------------------------------------------------------------------


def test_loss_bands() -> None:
    loss = LossBasedController(1_000_000, min_packets=100)
    loss.on_packets(1, 100, 1_200_000, 0.0)  # 1 %: follows the delay-based rate
    assert loss.bitrate_bps == 1_200_000
    loss.on_packets(5, 100, 1_500_000, 1.0)  # 5 %: holds
    assert loss.bitrate_bps == 1_200_000
    loss.on_packets(20, 100, 1_500_000, 2.0)  # 20 %: x (1 - 0.1)
    assert loss.bitrate_bps == pytest.approx(1_080_000)
    loss.on_packets(20, 100, 1_500_000, 2.1)  # again too soon (300 ms + RTT)
    assert loss.bitrate_bps == pytest.approx(1_080_000)
    loss.on_packets(20, 100, 1_500_000, 2.5)
    assert loss.bitrate_bps == pytest.approx(972_000)
    loss.on_packets(0, 100, 1_500_000, 3.0)  # clean again: +5 % per window
    assert loss.bitrate_bps == pytest.approx(1_020_600)
    for i in range(20):
        loss.on_packets(0, 100, 1_500_000, 4.0 + i)
    assert loss.bitrate_bps == 1_500_000 and not loss.limited


def test_loss_is_judged_over_a_window_not_one_feedback() -> None:
    loss = LossBasedController(1_000_000, min_packets=40)
    loss.on_packets(3, 5, 1_000_000, 0.0)  # 60 % of five packets: too few to judge
    assert loss.bitrate_bps == 1_000_000
    loss.on_packets(0, 35, 1_000_000, 0.05)  # 3 of 40 = 7.5 %: hold, not cut
    assert loss.bitrate_bps == 1_000_000 and loss.limited


# -- the combination ---------------------------------------------------------------------


def _results(
    first_seq: int, n: int, t0: float, interval: float, size: int, queue_growth: float = 0.0,
    queue_from: int = 0,
) -> list[PacketResult]:
    """``n`` packets ``interval`` apart; from ``queue_from`` on each one waits
    ``queue_growth`` seconds longer than the one before (a queue building)."""
    return [
        PacketResult(first_seq + i, size, t0 + i * interval,
                     100 + t0 + i * interval + 0.02
                     + queue_growth * max(first_seq + i - queue_from, 0))
        for i in range(n)
    ]


def test_bwe_rises_on_a_clean_path_and_falls_when_delay_grows() -> None:
    bwe = SendSideBwe(start_bps=300_000)
    seq, t = 0, 0.0
    for _ in range(60):  # 3 s, 50 ms feedback, ~600 kbit/s delivered
        bwe.on_packet_results(_results(seq, 5, t, 0.01, 750), t + 0.07)
        seq, t = seq + 5, t + 0.05
    high = bwe.target_bps
    assert high > 450_000
    for _ in range(20):  # each packet 2 ms later than the previous: a queue builds
        batch = _results(seq, 5, t, 0.01, 750, queue_growth=0.002, queue_from=300)
        bwe.on_packet_results(batch, t + 0.07)
        seq, t = seq + 5, t + 0.05
    assert bwe.usage is Usage.OVERUSING or bwe.rate.decreases > 0
    assert bwe.target_bps < high


def test_feedback_timeout_backs_off_and_clamps() -> None:
    bwe = SendSideBwe(start_bps=1_000_000, min_bps=300_000)
    bwe.on_packet_results(_results(0, 10, 0.0, 0.01, 1000), 0.2)
    start = bwe.target_bps
    assert bwe.on_tick(1.0) == start  # not yet
    assert bwe.on_tick(1.3) == int(start * 0.8)
    assert bwe.on_tick(1.5) == int(start * 0.8)  # once per timeout
    assert bwe.on_tick(2.4) == int(start * 0.64)
    for i in range(20):
        bwe.on_tick(3 + i)
    assert bwe.target_bps == 300_000


def test_an_idle_sender_is_not_backed_off() -> None:
    bwe = SendSideBwe(start_bps=1_000_000)
    bwe.on_packet_results(_results(0, 10, 0.0, 0.01, 1000), 0.2)
    start = bwe.target_bps
    for i in range(50):
        bwe.on_tick(0.3 + i * 0.1, sending=False)
    assert bwe.target_bps == start
    assert bwe.on_tick(6.0) == start  # the idle time does not count as a timeout either
    assert bwe.on_tick(6.3) == int(start * 0.8)


def test_rtt_samples() -> None:
    bwe = SendSideBwe()
    bwe.on_rtt(-1.0)
    bwe.on_rtt(float("nan"))
    assert bwe.rtt is None
    bwe.on_rtt(0.2)
    assert bwe.rtt == pytest.approx(0.2)
    bwe.on_packet_results(_results(0, 5, 0.0, 0.01, 500), 5.0)  # given RTT wins over feedback
    assert bwe.rtt == pytest.approx(0.2)
    fallback = SendSideBwe()
    fallback.on_packet_results(_results(0, 5, 0.0, 0.01, 500), 0.1)
    assert fallback.rtt == pytest.approx(0.06)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        SendSideBwe(start_bps=10_000, min_bps=50_000)
    with pytest.raises(ValueError):
        SendSideBwe(start_bps=6_000_000, max_bps=5_000_000)


def test_all_lost_feedback_only_informs_the_loss_controller() -> None:
    bwe = SendSideBwe(start_bps=500_000)
    lost = [PacketResult(i, 1000, i * 0.01, None) for i in range(60)]
    bwe.on_packet_results(lost, 1.0)
    assert bwe.packets_lost == 60
    assert bwe.target_bps == 250_000  # 100 % loss: x (1 - 0.5)


# -- end to end through the simulated bottleneck ----------------------------------------


def test_converges_on_a_1_mbit_link_with_low_queueing() -> None:
    sim = CallSim(Link(1_000_000, queue_bytes=60_000, delay=0.02))
    sim.run(20.0)
    targets = sim.targets(10.0, 20.0)
    assert min(targets) >= 0.7 * 1_000_000
    assert max(targets) <= 1.05 * 1_000_000
    assert max(sim.sojourns(10.0, 20.0)) < 0.15
    assert max(sim.sojourns(0.0, 20.0)) < 0.15  # the ramp-up did not flood the queue either
    assert sim.link.tail_drops == 0
    assert sim.pacer.dropped_video == 0


def test_follows_a_step_down_and_back_up() -> None:
    sim = CallSim(Link(2_000_000, queue_bytes=60_000, delay=0.02))
    sim.run(15.0)
    assert sim.bwe.target_bps >= 1_600_000
    sim.set_capacity(300_000)
    sim.run(25.0)
    assert max(sim.targets(18.0, 25.0)) <= 1.1 * 300_000  # adapted within 3 s
    # the queue the drop left behind is drained within a few seconds, not left standing
    assert max(sim.sojourns(22.0, 25.0)) < 0.15
    assert sim.bwe.drains >= 1
    assert sim.bwe.rebaselines == 0  # a draining queue is never mistaken for a longer path
    sim.set_capacity(2_000_000)
    sim.run(40.0)
    reached = [s.t for s in sim.samples if s.t >= 25.0 and s.target_bps >= 1_600_000]
    assert reached and reached[0] <= 35.0
    assert min(sim.targets(35.0, 40.0)) >= 0.8 * 2_000_000


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_loss_at_ample_capacity_does_not_collapse_the_rate(seed: int) -> None:
    sim = CallSim(Link(10_000_000, queue_bytes=200_000, delay=0.02, loss=0.05, seed=seed))
    sim.run(30.0)
    assert sim.link.random_losses > 100  # the loss really happened
    assert sim.bwe.packets_lost >= 0.9 * sim.link.random_losses  # and was seen
    assert min(sim.targets(1.0, 30.0)) >= 0.7 * 300_000
    assert sim.bwe.target_bps >= 0.7 * 300_000


@pytest.mark.parametrize("seed", [1, 2])
def test_jitter_alone_does_not_drive_the_rate_down(seed: int) -> None:
    sim = CallSim(Link(10_000_000, queue_bytes=200_000, delay=0.05, jitter=0.01, seed=seed))
    sim.run(15.0)
    assert min(sim.targets(0.0, 15.0)) >= 300_000
    assert sim.bwe.target_bps >= 2_000_000
    assert sim.bwe.packets_lost == 0  # reordering is not loss
    assert sim.bwe.rate.decreases == 0


def test_without_feedback_the_estimator_only_backs_off() -> None:
    sim = CallSim(Link(1_000_000, queue_bytes=60_000, delay=0.02))
    sim.run(5.0)
    before = sim.bwe.target_bps
    sim.link.loss = 1.0  # the path dies: nothing arrives, no feedback
    sim.run(10.0)
    assert sim.bwe.target_bps <= 0.5 * before


def test_loss_bands_are_configurable() -> None:
    tolerant = LossBasedController(1_000_000, min_packets=100, low=0.06, high=0.2)
    tolerant.on_packets(5, 100, 1_200_000, 0.0)  # 5 %: still "allow" in this band
    assert tolerant.bitrate_bps == 1_200_000 and not tolerant.limited
    tolerant.on_packets(15, 100, 1_200_000, 1.0)  # 15 %: hold
    assert tolerant.bitrate_bps == 1_200_000 and tolerant.limited
    bwe = SendSideBwe(loss_low=0.06, loss_high=0.2)
    assert (bwe.loss.low, bwe.loss.high) == (0.06, 0.2)


def test_a_longer_path_is_held_not_drained() -> None:
    """One-way delay jumps 200 ms for good (a route change) while everything sent still
    arrives: no standing-queue cuts, and the rate is not driven down."""
    bwe = SendSideBwe(start_bps=500_000)
    seq, t = 0, 0.0
    for _ in range(100):  # 5 s clean, 600 kbit/s delivered
        bwe.on_packet_results(_results(seq, 5, t, 0.01, 750), t + 0.07)
        seq, t = seq + 5, t + 0.05
    assert bwe.target_bps > 600_000
    for _ in range(100):  # 5 s more, 200 ms longer path
        batch = [PacketResult(r.transport_seq, r.size, r.send_time, r.arrival_time + 0.2)
                 for r in _results(seq, 5, t, 0.01, 750) if r.arrival_time is not None]
        bwe.on_packet_results(batch, t + 0.27)
        seq, t = seq + 5, t + 0.05
    assert bwe.rebaselines == 1  # taken for a queue at first, then for what it is
    assert bwe.queue_delay < 0.01
    assert bwe.drains <= 8  # about one per RTT for the second it took to tell
    assert bwe.target_bps >= 600_000  # still at least what the path carries


def test_route_change_through_the_simulated_link() -> None:
    """+200 ms each way at once: the trendline reads the jump as overuse (as GCC does) and
    backs off (to about half: the 200 ms hole in arrivals also dents the acknowledged
    rate); the standing-queue logic must then accept the new delay instead of cutting on,
    and the rate climbs back (slowly: near the capacity it learnt, increase is additive)."""
    sim = CallSim(Link(1_000_000, queue_bytes=60_000, delay=0.02))
    sim.run(10.0)
    sim.link.delay = 0.22
    sim.run(25.0)
    assert sim.bwe.rebaselines == 1
    assert sim.bwe.drains <= 2
    assert min(sim.targets(12.0, 25.0)) >= 0.5 * 1_000_000
    assert sim.bwe.target_bps >= 0.6 * 1_000_000
    assert sim.bwe.target_bps > min(sim.targets(12.0, 25.0)) * 1.15  # and rising
    assert max(sim.sojourns(12.0, 25.0)) < 0.15


def test_keyframes_every_two_seconds_keep_the_estimate_and_queue_sane() -> None:
    sim = CallSim(Link(1_000_000, queue_bytes=37_500, delay=0.02), keyframe_every=2.0)
    sim.run(20.0)
    targets = sim.targets(10.0, 20.0)
    assert min(targets) >= 0.6 * 1_000_000 and max(targets) <= 1.05 * 1_000_000
    assert max(sim.sojourns(10.0, 20.0)) < 0.2
    assert sim.link.tail_drops == 0
