"""Send-side bandwidth estimation, sans-I/O (after draft-ietf-rmcat-gcc-02 and goog_cc).

Input: :class:`~confero.protocol.twcc.PacketResult` lists from transport feedback, the
caller's ``now`` and optionally RTT samples. Output: :attr:`SendSideBwe.target_bps`, the
rate the sender's encoders (and the pacer, x2.5) should use. Nothing here knows what
path it serves, so one instance per sending path: server -> each subscriber, client ->
server, peer -> peer.

Pipeline: received packets, in arrival order, are grouped into 5 ms send bursts
(:class:`InterArrival`); the change in one-way delay between groups feeds a
:class:`TrendlineEstimator` whose slope the :class:`OveruseDetector` compares with an
adaptive threshold; the resulting normal / overusing / underusing signal drives the
:class:`AimdRateController`, which also uses the :class:`AckedBitrateEstimator` (what
actually got through) to decide how far to back off. A :class:`LossBasedController` caps
the result when the path loses packets without queueing (policers, radio).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from confero.protocol.twcc import PacketResult

#: Multiplicative increase per second far from any capacity estimate. GCC says 8 %/s, but
#: libwebrtc reaches the capacity quickly by probing (padding bursts), which we do not have:
#: at 8 %/s a 300 kbit/s start needs 11 s to reach 700 kbit/s, and a path recovering from
#: 300 kbit/s to 2 Mbit/s 25 s. 30 %/s does both within 3.5 and 7 s on a 40 ms RTT path
#: (tests/test_bwe.py); the overshoot stays small because near a known capacity the
#: increase is additive (half a packet per RTT + 100 ms, as the GCC draft says) anyway.
RAMP_PER_S = 0.3


class Usage(Enum):
    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"


@dataclass(frozen=True, slots=True)
class GroupDelta:
    """Between two consecutive send groups: how far apart they left and arrived."""

    send_delta: float  # seconds
    arrival_delta: float  # seconds
    arrival_time: float  # arrival of the newer group's last packet (receiver clock)


@dataclass(slots=True)
class _Group:
    first_send: float
    last_send: float
    first_arrival: float
    last_arrival: float
    size: int


class InterArrival:
    """Groups packets sent within ``burst`` seconds of a group's first packet.

    A video frame leaves the pacer as a short burst; comparing single packets would measure
    the pacer, not the path. Packets that arrive in a tight bunch with a shrinking delay
    (a queue somewhere releasing them) join the current group too, as in goog_cc.
    """

    def __init__(self, *, burst: float = 0.005, max_burst_duration: float = 0.1) -> None:
        self.burst = burst
        self.max_burst_duration = max_burst_duration
        self._current: _Group | None = None
        self._previous: _Group | None = None
        self.reordered = 0

    def on_packet(self, send_time: float, arrival_time: float, size: int) -> GroupDelta | None:
        cur = self._current
        if cur is None:
            self._current = _Group(send_time, send_time, arrival_time, arrival_time, size)
            return None
        if send_time < cur.first_send:
            self.reordered += 1  # sent before the group we are building: no information
            return None
        if send_time - cur.first_send <= self.burst or self._belongs_to_burst(
            send_time, arrival_time
        ):
            cur.last_send = max(cur.last_send, send_time)
            cur.last_arrival = max(cur.last_arrival, arrival_time)
            cur.size += size
            return None
        delta: GroupDelta | None = None
        prev = self._previous
        if prev is not None:
            arrival_delta = cur.last_arrival - prev.last_arrival
            send_delta = cur.last_send - prev.last_send
            # a clock jump or a stall is not queueing the delay filter should learn from
            if arrival_delta >= 0 and arrival_delta - send_delta <= 3.0:
                delta = GroupDelta(send_delta, arrival_delta, cur.last_arrival)
        self._previous = cur
        self._current = _Group(send_time, send_time, arrival_time, arrival_time, size)
        return delta

    def _belongs_to_burst(self, send_time: float, arrival_time: float) -> bool:
        cur = self._current
        assert cur is not None
        arrival_delta = arrival_time - cur.last_arrival
        propagation_delta = arrival_delta - (send_time - cur.last_send)
        return (
            propagation_delta < 0
            and arrival_delta <= self.burst
            and arrival_time - cur.first_arrival < self.max_burst_duration
        )


class TrendlineEstimator:
    """Slope of the (smoothed, accumulated) one-way delay over the last ``window`` groups.

    A positive slope means a queue is building. Working in milliseconds keeps the detector's
    constants (threshold 12.5, gain 4) in the units they were tuned in.
    """

    def __init__(self, *, window: int = 20, smoothing: float = 0.9, gain: float = 4.0) -> None:
        self.window = window
        self.smoothing = smoothing
        self.gain = gain
        self._points: deque[tuple[float, float]] = deque(maxlen=window)
        self._first_arrival_ms: float | None = None
        self._accumulated = 0.0
        self._smoothed = 0.0
        self.num_deltas = 0
        self.trend = 0.0  # ms of delay growth per ms

    def update(self, delta: GroupDelta) -> float:
        """Adds one group delta; returns the modified trend the detector compares."""
        arrival_ms = delta.arrival_time * 1000.0
        if self._first_arrival_ms is None:
            self._first_arrival_ms = arrival_ms
        self.num_deltas = min(self.num_deltas + 1, 1000)
        self._accumulated += (delta.arrival_delta - delta.send_delta) * 1000.0
        self._smoothed = self.smoothing * self._smoothed + (1 - self.smoothing) * self._accumulated
        self._points.append((arrival_ms - self._first_arrival_ms, self._smoothed))
        if len(self._points) == self.window:
            slope = _slope(self._points)
            if slope is not None:
                self.trend = slope
        return min(self.num_deltas, 60) * self.trend * self.gain


def _slope(points: Sequence[tuple[float, float]]) -> float | None:
    n = len(points)
    mean_x = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return num / den if den > 0 else None


class OveruseDetector:
    """Compares the modified trend with a threshold that adapts to it.

    The threshold grows slowly (``k_up``) when the trend exceeds it and shrinks faster
    (``k_down``) when it does not, so competing TCP-like flows that keep a standing queue
    do not starve us, while a quiet path stays sensitive. Overuse is declared only when the
    trend stays above the threshold for ``overuse_time`` and is not falling.
    """

    def __init__(
        self,
        *,
        threshold: float = 12.5,
        k_up: float = 0.0087,
        k_down: float = 0.039,
        overuse_time: float = 0.010,
    ) -> None:
        self.threshold = threshold
        self.k_up = k_up
        self.k_down = k_down
        self.overuse_time = overuse_time
        self.usage = Usage.NORMAL
        self._time_over: float | None = None
        self._over_count = 0
        self._prev_trend = 0.0
        self._last_update_ms: float | None = None

    def detect(self, modified_trend: float, trend: float, send_delta: float, now: float) -> Usage:
        if modified_trend > self.threshold:
            if self._time_over is None:
                self._time_over = send_delta / 2
            else:
                self._time_over += send_delta
            self._over_count += 1
            if (
                self._time_over > self.overuse_time
                and self._over_count > 1
                and trend >= self._prev_trend
            ):
                self._time_over = 0.0
                self._over_count = 0
                self.usage = Usage.OVERUSING
        elif modified_trend < -self.threshold:
            self._time_over = None
            self._over_count = 0
            self.usage = Usage.UNDERUSING
        else:
            self._time_over = None
            self._over_count = 0
            self.usage = Usage.NORMAL
        self._prev_trend = trend
        self._adapt(modified_trend, now * 1000.0)
        return self.usage

    def _adapt(self, modified_trend: float, now_ms: float) -> None:
        if self._last_update_ms is None:
            self._last_update_ms = now_ms
        size = abs(modified_trend)
        if size > self.threshold + 15.0:
            # a spike (e.g. a route change) must not drag the threshold up
            self._last_update_ms = now_ms
            return
        k = self.k_down if size < self.threshold else self.k_up
        elapsed = min(now_ms - self._last_update_ms, 100.0)
        self.threshold += k * (size - self.threshold) * elapsed
        self.threshold = min(max(self.threshold, 6.0), 600.0)
        self._last_update_ms = now_ms


class AckedBitrateEstimator:
    """What the path delivered: bytes acknowledged over the last ``window`` seconds of
    arrival time (receiver clock), so a queue draining at the bottleneck shows its rate."""

    def __init__(self, *, window: float = 0.5, max_packets: int = 4096) -> None:
        self.window = window
        self._packets: deque[tuple[float, int]] = deque(maxlen=max_packets)
        self._bytes = 0
        self._newest: float | None = None

    def on_packet(self, arrival_time: float, size: int) -> None:
        if len(self._packets) == self._packets.maxlen:
            self._bytes -= self._packets[0][1]
        self._packets.append((arrival_time, size))
        self._bytes += size
        self._newest = arrival_time if self._newest is None else max(self._newest, arrival_time)
        while self._packets and self._packets[0][0] < self._newest - self.window:
            self._bytes -= self._packets.popleft()[1]

    @property
    def bitrate_bps(self) -> float | None:
        """None until the samples span half a window (too little to mean a rate)."""
        if len(self._packets) < 2:
            return None
        assert self._newest is not None
        span = self._newest - self._packets[0][0]
        if span < self.window / 2:
            return None
        # n packets span n - 1 gaps: the first one's bytes arrived before the span began
        return (self._bytes - self._packets[0][1]) * 8 / max(span, self.window * 0.75)


class _LinkCapacity:
    """Running average (and spread) of the acknowledged rate at the moments of overuse:
    where the bottleneck probably is, so the controller creeps up near it instead of
    multiplying into it again."""

    def __init__(self) -> None:
        self.estimate_kbps: float | None = None
        self._deviation = 0.4

    def on_overuse(self, acked_bps: float) -> None:
        sample = acked_bps / 1000.0
        alpha = 0.05 if self.estimate_kbps is not None else 1.0
        estimate = sample if self.estimate_kbps is None else self.estimate_kbps
        estimate = (1 - alpha) * estimate + alpha * sample
        error = estimate - sample
        self._deviation = (1 - 0.05) * self._deviation + 0.05 * error * error / max(estimate, 1.0)
        self._deviation = min(max(self._deviation, 0.4), 2.5)
        self.estimate_kbps = estimate

    def _spread(self) -> float:
        assert self.estimate_kbps is not None
        return 3 * math.sqrt(self._deviation * self.estimate_kbps)

    def upper_bps(self) -> float:
        if self.estimate_kbps is None:
            return math.inf
        return (self.estimate_kbps + self._spread()) * 1e3

    def lower_bps(self) -> float:
        return 0.0 if self.estimate_kbps is None else (self.estimate_kbps - self._spread()) * 1e3

    def reset(self) -> None:
        self.estimate_kbps = None


class _RateState(Enum):
    HOLD = "hold"
    INCREASE = "increase"
    DECREASE = "decrease"


class AimdRateController:
    """Additive-increase near the link capacity estimate (from its lower bound up),
    multiplicative far from it (none yet, or well below it, as after draining a queue),
    back off to ``beta`` x the acknowledged rate on overuse."""

    def __init__(
        self,
        start_bps: float,
        *,
        min_bps: float,
        max_bps: float,
        beta: float = 0.85,
        increase_per_s: float = RAMP_PER_S,
    ) -> None:
        self.bitrate_bps = start_bps
        self.min_bps = min_bps
        self.max_bps = max_bps
        self.beta = beta
        self.increase_per_s = increase_per_s
        self.additive_packets = 0.5  # per response time
        self.state = _RateState.INCREASE
        self.link = _LinkCapacity()
        self.rtt = 0.1
        self._last_change: float | None = None
        self.decreases = 0

    def hold(self, now: float) -> None:
        """No increase now; the next normal signal starts increasing from ``now``."""
        self.state = _RateState.HOLD
        self._last_change = now

    def time_to_reduce_further(self, now: float, acked_bps: float | None) -> bool:
        """Back off at most once per RTT, unless what gets through is far below us."""
        if self._last_change is None:
            return True
        if now - self._last_change >= min(max(self.rtt, 0.01), 0.2):
            return True
        return acked_bps is not None and acked_bps < 0.5 * self.bitrate_bps

    def update(self, usage: Usage, acked_bps: float | None, now: float) -> float:
        if self._last_change is None:
            self._last_change = now
        if usage is Usage.OVERUSING:
            self.state = _RateState.DECREASE
        elif usage is Usage.UNDERUSING:
            self.state = _RateState.HOLD  # a queue is draining: wait for it to empty
        elif self.state is _RateState.HOLD:
            self.state = _RateState.INCREASE
            self._last_change = now
        new = self.bitrate_bps
        if self.state is _RateState.INCREASE:
            if acked_bps is not None and acked_bps > self.link.upper_bps():
                self.link.reset()  # the path grew: the old capacity no longer applies
            limit = math.inf if acked_bps is None else 1.5 * acked_bps + 10_000
            if new < limit:
                elapsed = now - self._last_change
                if self.link.estimate_kbps is not None and new >= self.link.lower_bps():
                    new += self._additive(elapsed)
                else:
                    new += self._multiplicative(elapsed)
                new = min(new, limit)
            self._last_change = now
        elif self.state is _RateState.DECREASE:
            decreased = self.beta * (acked_bps if acked_bps is not None else self.bitrate_bps)
            if decreased > self.bitrate_bps and self.link.estimate_kbps is not None:
                decreased = self.beta * self.link.estimate_kbps * 1000
            if decreased < self.bitrate_bps:
                new = decreased
            if acked_bps is not None:
                if acked_bps < self.link.lower_bps():
                    self.link.reset()
                self.link.on_overuse(acked_bps)
            self.decreases += 1
            self.state = _RateState.HOLD
            self._last_change = now
        self.bitrate_bps = min(max(new, self.min_bps), self.max_bps)
        return self.bitrate_bps

    def _multiplicative(self, elapsed: float) -> float:
        factor: float = (1 + self.increase_per_s) ** min(max(elapsed, 0.0), 1.0)
        return max(self.bitrate_bps * (factor - 1), 1000.0)

    def _additive(self, elapsed: float) -> float:
        """Half an average packet per response time (RTT + 100 ms), as the GCC draft says:
        slow enough that the trendline notices the queue before it is long."""
        frame_bits = self.bitrate_bps / 30
        packets_per_frame = math.ceil(frame_bits / (1200 * 8))
        packet_bits = frame_bits / max(packets_per_frame, 1)
        per_s = max(4000.0, self.additive_packets * packet_bits / (self.rtt + 0.1))
        return per_s * max(elapsed, 0.0)


class LossBasedController:
    """Caps the rate when packets are lost without queueing delay to warn first.

    Loss is judged over windows of at least ``min_packets`` packets (or ``max_window``
    seconds) so one unlucky feedback cannot move it. Below 2 % loss it does not limit
    (it follows the delay-based rate); 2-10 % holds the rate where it is; above 10 % cuts
    it by half the loss fraction, at most once per 300 ms + RTT. Once limited, each clean
    window (< 2 %) lets it rise 5 % until it meets the delay-based rate again.
    """

    def __init__(
        self,
        start_bps: float,
        *,
        min_packets: int = 40,
        max_window: float = 1.0,
        low: float = 0.02,
        high: float = 0.10,
        min_bps: float = 0.0,
    ) -> None:
        self.bitrate_bps = start_bps
        #: never below the estimator's own floor: a long spell of heavy loss once drove it
        #: to 1 kbit/s, from where 5 % per clean window took minutes to climb back
        self.min_bps = min_bps
        self.low = low
        self.high = high
        self.min_packets = min_packets
        self.max_window = max_window
        self.rtt = 0.1
        self.limited = False
        self.loss_fraction = 0.0  # of the last complete window
        self._lost = 0
        self._total = 0
        self._window_start: float | None = None
        self._last_decrease: float | None = None

    def on_packets(self, lost: int, total: int, delay_based_bps: float, now: float) -> float:
        if self._window_start is None:
            self._window_start = now
        self._lost += lost
        self._total += total
        window_done = self._total >= self.min_packets or (
            now - self._window_start >= self.max_window and self._total >= 10
        )
        if window_done:
            loss = self._lost / self._total
            self.loss_fraction = loss
            self._lost = self._total = 0
            self._window_start = now
            if loss < self.low:
                if self.limited:
                    self.bitrate_bps *= 1.05
                    self.limited = self.bitrate_bps < delay_based_bps
            elif loss <= self.high:
                if not self.limited:
                    self.bitrate_bps = min(self.bitrate_bps, delay_based_bps)
                self.limited = True
            elif self._last_decrease is None or now - self._last_decrease >= 0.3 + self.rtt:
                self.bitrate_bps = min(self.bitrate_bps, delay_based_bps) * (1 - 0.5 * loss)
                self._last_decrease = now
                self.limited = True
        if not self.limited:
            self.bitrate_bps = delay_based_bps
        self.bitrate_bps = max(self.bitrate_bps, self.min_bps)
        return self.bitrate_bps


class SendSideBwe:
    """One sending path's bandwidth estimate: min(delay-based, loss-based), clamped.

    Feed it every :class:`PacketResult` batch from :meth:`SentHistory.on_feedback`, and RTT
    samples when the caller has better ones than the feedback round trip (which includes
    the receiver's report interval). Call :meth:`on_tick` now and then (e.g. 10 Hz) so that
    a path whose feedback stopped is backed off.

    Rates are bit/s (``start_bps``, ``min_bps``, ``max_bps``, :attr:`target_bps`), times
    seconds. ``standing_queue``: queueing delay (one-way delay above its ``standing_window``
    minimum) above which the rate stops rising and drains the queue in ``drain_time``.
    ``loss_low``/``loss_high``: the loss controller's bands (allow / hold / cut).
    """

    def __init__(
        self,
        *,
        start_bps: float = 300_000,
        min_bps: float = 50_000,
        max_bps: float = 5_000_000,
        increase_per_s: float = RAMP_PER_S,
        feedback_timeout: float = 1.0,
        standing_queue: float = 0.1,
        standing_window: float = 10.0,
        drain_time: float = 2.0,
        loss_low: float = 0.02,
        loss_high: float = 0.10,
    ) -> None:
        if not 0 < min_bps <= start_bps <= max_bps:
            raise ValueError("need 0 < min_bps <= start_bps <= max_bps")
        self.min_bps = min_bps
        self.max_bps = max_bps
        self.feedback_timeout = feedback_timeout
        self.standing_queue = standing_queue
        self.standing_window = standing_window
        self.drain_time = drain_time
        self._owd: deque[tuple[float, float]] = deque()
        self._last_drain: float | None = None
        self._drain_ref: tuple[float, float] | None = None  # (since, queue delay then)
        self._last_owd = 0.0
        self.rebaselines = 0  # standing "queues" that turned out to be a longer path
        self.queue_delay = 0.0  # seconds, estimated from one-way delays
        self.drains = 0
        self.inter_arrival = InterArrival()
        self.trendline = TrendlineEstimator()
        self.detector = OveruseDetector()
        self.acked = AckedBitrateEstimator()
        self.rate = AimdRateController(
            start_bps, min_bps=min_bps, max_bps=max_bps, increase_per_s=increase_per_s
        )
        self.loss = LossBasedController(start_bps, low=loss_low, high=loss_high,
                                        min_bps=min_bps)
        self._target = start_bps
        self._rtt: float | None = None
        self._rtt_given = False
        self._last_feedback: float | None = None
        self._last_timeout_cut: float | None = None
        self.packets_lost = 0
        self.packets_received = 0

    @property
    def target_bps(self) -> int:
        return int(self._target)

    @property
    def rtt(self) -> float | None:
        return self._rtt

    @property
    def usage(self) -> Usage:
        return self.detector.usage

    @property
    def acked_bps(self) -> float | None:
        return self.acked.bitrate_bps

    def on_rtt(self, rtt: float) -> None:
        if rtt <= 0 or not math.isfinite(rtt):
            return
        self._rtt_given = True
        self._set_rtt(rtt)

    def _set_rtt(self, rtt: float) -> None:
        self._rtt = rtt if self._rtt is None else 0.875 * self._rtt + 0.125 * rtt
        self.rate.rtt = self._rtt
        self.loss.rtt = self._rtt

    def on_packet_results(self, results: Sequence[PacketResult], now: float) -> int:
        """Updates the estimate; returns the new :attr:`target_bps`."""
        if not results:
            return self.target_bps
        self._last_feedback = now
        received = sorted(
            (r for r in results if r.arrival_time is not None),
            key=lambda r: (r.arrival_time, r.transport_seq),
        )
        lost = len(results) - len(received)
        self.packets_lost += lost
        self.packets_received += len(received)
        if received and not self._rtt_given:
            newest = max(r.send_time for r in received)
            self._set_rtt(max(now - newest, 0.001))
        for r in received:
            assert r.arrival_time is not None
            self.acked.on_packet(r.arrival_time, r.size)
            delta = self.inter_arrival.on_packet(r.send_time, r.arrival_time, r.size)
            if delta is not None:
                modified = self.trendline.update(delta)
                self.detector.detect(modified, self.trendline.trend, delta.send_delta, now)
        if received:
            self._track_queue(received, now)
        acked = self.acked.bitrate_bps
        usage = self.detector.usage
        if usage is Usage.OVERUSING:
            self._drain_ref = None  # congestion, not a longer path
            if self.rate.time_to_reduce_further(now, acked):
                self.rate.update(usage, acked, now)
        elif self.queue_delay > self.standing_queue:
            self._drain(acked, now)
        else:
            self._drain_ref = None
            self.rate.update(usage, acked, now)
        self.loss.on_packets(lost, len(results), self.rate.bitrate_bps, now)
        self._combine()
        return self.target_bps

    def _track_queue(self, received: Sequence[PacketResult], now: float) -> None:
        """Queueing delay = this batch's smallest one-way delay minus the smallest seen in
        ``standing_window`` seconds (the clocks' offset cancels out)."""
        owd = min(r.arrival_time - r.send_time for r in received if r.arrival_time is not None)
        self._last_owd = owd
        self._owd.append((now, owd))
        while self._owd and self._owd[0][0] < now - self.standing_window:
            self._owd.popleft()
        self.queue_delay = max(owd - min(v for _, v in self._owd), 0.0)

    def _drain(self, acked: float | None, now: float) -> None:
        """A queue the trendline cannot see (it only sees delay *change*): typically what a
        sudden capacity drop left behind. Hold increases; while the path delivers more than
        we send (the queue is what feeds it), aim below the delivered rate so the queue is
        gone in about ``drain_time``, re-aiming once per RTT.

        A path that just got longer looks the same (higher delay, flat), but sending less
        does not shorten it: when the delay has not fallen by 20 ms within a second of
        trying, the higher delay becomes the new baseline and we stop."""
        self.rate.hold(now)
        ref = self._drain_ref
        if ref is None or self.queue_delay < ref[1] - 0.02 or self.queue_delay > ref[1]:
            # first look, draining (carry on), or still growing: measure from here
            self._drain_ref = (now, self.queue_delay)
        elif now - ref[0] > 1.0 + (self._rtt or 0.1):
            self._owd.clear()
            self._owd.append((now, self._last_owd))
            self.queue_delay = 0.0
            self._drain_ref = None
            self.rebaselines += 1
            return
        if acked is None or acked <= 1.05 * self.rate.bitrate_bps:
            return
        if self._last_drain is not None and now - self._last_drain < (self._rtt or 0.1):
            return
        factor = max(0.5, 1 - self.queue_delay / self.drain_time)
        self.rate.bitrate_bps = max(min(self.rate.bitrate_bps, acked * factor), self.min_bps)
        self._last_drain = now
        self.drains += 1

    def on_probe(self, bps: float, now: float) -> int:
        """A probe (:mod:`confero.protocol.probe`) showed the link carries ``bps``: jump
        there if that is more than the estimate. The link-capacity memory of the last
        overuse is dropped (the path grew), and a loss limit is lifted to it: the probe
        just went through without that loss."""
        bps = min(bps, self.max_bps)
        if bps <= self._target:
            return self.target_bps
        if bps > self.rate.bitrate_bps:
            self.rate.bitrate_bps = bps
            self.rate.link.reset()
            self.rate.hold(now)  # increases go on from here, at the usual pace
        if self.loss.loss_fraction <= self.loss.high:
            self.loss.bitrate_bps = max(self.loss.bitrate_bps, bps)
            self.loss.limited = self.loss.bitrate_bps < self.rate.bitrate_bps
        self._combine()
        return self.target_bps

    def on_tick(self, now: float, *, sending: bool = True) -> int:
        """Backs off by 20 % per ``feedback_timeout`` while feedback has stopped although
        packets are outstanding (``sending``: e.g. ``SentHistory.in_flight > 0``); an idle
        sender gets no feedback and must not be punished for it."""
        if self._last_feedback is None:
            return self.target_bps
        if not sending:
            self._last_feedback = max(self._last_feedback, now)
            return self.target_bps
        since = self._last_feedback
        if self._last_timeout_cut is not None:
            since = max(since, self._last_timeout_cut)
        if now - since > self.feedback_timeout:
            self.rate.bitrate_bps = max(self.rate.bitrate_bps * 0.8, self.min_bps)
            self.loss.bitrate_bps = min(self.loss.bitrate_bps, self.rate.bitrate_bps)
            self._last_timeout_cut = now
            self._combine()
        return self.target_bps

    def _combine(self) -> None:
        target = min(self.rate.bitrate_bps, self.loss.bitrate_bps)
        self._target = min(max(target, self.min_bps), self.max_bps)
