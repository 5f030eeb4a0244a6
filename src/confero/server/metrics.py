"""Prometheus export of the server's counters, read at scrape time (no work per message)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from confero.server.core import SignalingCore
from confero.server.media_router import MediaRouter


class ServerCollector(Collector):
    def __init__(
        self,
        core: SignalingCore,
        shell_counters: Callable[[], dict[str, int]],
        media: MediaRouter | None,
    ) -> None:
        self._core = core
        self._shell_counters = shell_counters
        self._media = media

    def collect(self) -> Iterator[Metric]:
        core = self._core
        yield GaugeMetricFamily(
            "confero_meetings_open", "Meetings currently open",
            value=len(core.registry.open_meetings()),
        )
        yield GaugeMetricFamily(
            "confero_participants", "Participants currently in a meeting",
            value=core.registry.participant_count(),
        )
        yield GaugeMetricFamily(
            "confero_connections", "Signaling WebSocket connections open",
            value=core.connection_count(),
        )
        yield CounterMetricFamily(
            "confero_connections_accepted", "Signaling WebSocket connections accepted",
            value=core.counters.connections_opened,
        )
        received = CounterMetricFamily(
            "confero_messages_received", "Valid signaling messages received, by type",
            labels=["type"],
        )
        for kind, count in sorted(core.counters.received.items()):
            received.add_metric([kind], count)
        yield received
        errors = CounterMetricFamily(
            "confero_errors", "Error replies sent, by error code", labels=["code"]
        )
        for code, count in sorted(core.counters.errors.items()):
            errors.add_metric([code], count)
        yield errors
        yield CounterMetricFamily(
            "confero_chat_messages", "Chat messages accepted",
            value=core.counters.chat_messages,
        )
        for name, value in sorted(self._shell_counters().items()):
            yield CounterMetricFamily(f"confero_{name}", name.replace("_", " "), value=value)
        if self._media is not None:
            yield from _media_metrics(self._media)


def _media_metrics(media: MediaRouter) -> Iterator[Metric]:
    packets, size = media.forwarded_totals()
    yield CounterMetricFamily(
        "confero_media_forwarded_packets", "RTP/RTCP packets forwarded to receivers",
        value=packets,
    )
    yield CounterMetricFamily(
        "confero_media_forwarded_bytes", "Bytes forwarded to receivers (before SRTP)",
        value=size,
    )
    per_packets = GaugeMetricFamily(
        "confero_meeting_forwarded_packets", "Packets forwarded in an open meeting so far",
        labels=["meeting"],
    )
    per_bytes = GaugeMetricFamily(
        "confero_meeting_forwarded_bytes", "Bytes forwarded in an open meeting so far",
        labels=["meeting"],
    )
    for meeting_id, (count, octets) in sorted(media.meeting_stats().items()):
        per_packets.add_metric([meeting_id], count)
        per_bytes.add_metric([meeting_id], octets)
    yield per_packets
    yield per_bytes
    yield from _meeting_media_metrics(media)
    yield from _downlink_metrics(media)
    events = CounterMetricFamily(
        "confero_media_events", "Media packets dropped (by reason) and other media events",
        labels=["event"],
    )
    for name, count in sorted(media.counters.items()):
        events.add_metric([name], count)
    yield events
    mixers = media.mixers()
    busy = CounterMetricFamily(
        "confero_mixer_busy_seconds", "CPU time the open meetings' mixers spent",
        labels=["meeting"],
    )
    work = CounterMetricFamily(
        "confero_mixer_frames", "Frames the open meetings' mixers decoded and encoded",
        labels=["meeting", "op"],
    )
    for meeting_id, mixer in sorted(mixers.items()):
        busy.add_metric([meeting_id], mixer.stats.busy_seconds)
        work.add_metric([meeting_id, "decoded"], mixer.stats.decoded)
        work.add_metric([meeting_id, "encoded"], mixer.stats.encoded)
        work.add_metric([meeting_id, "skipped_silent"], mixer.stats.skipped_silent)
        work.add_metric([meeting_id, "concealed"], mixer.stats.concealed)
    yield busy
    yield work


def _meeting_media_metrics(media: MediaRouter) -> Iterator[Metric]:
    """Per meeting: media RECEIVED and FORWARDED (and mixed), so anyone can see that a
    peer-to-peer meeting costs the server nothing but keepalives."""
    families = {
        key: GaugeMetricFamily(f"confero_meeting_media_{key}", help_text, labels=["meeting"])
        for key, help_text in (
            ("received_packets", "RTP media packets received from an open meeting's members"),
            ("received_bytes", "RTP media bytes received from an open meeting's members"),
            ("mixed_packets", "Mixed audio packets sent to an open meeting's members"),
            ("mixed_bytes", "Mixed audio bytes sent to an open meeting's members"),
        )
    }
    for meeting_id, counts in sorted(media.meeting_media().items()):
        for key, family in families.items():
            family.add_metric([meeting_id], counts[key])
    yield from families.values()


def _downlink_metrics(media: MediaRouter) -> Iterator[Metric]:
    """The server's congestion control towards each subscriber, summarised per meeting
    (min/median/max, not one series per participant: ids churn with every join), and how
    many (subscriber, publisher) pairs get each temporal layer (0: 7.5 fps ... 2: 30 fps)."""
    estimate = GaugeMetricFamily(
        "confero_meeting_downlink_estimate_bps",
        "The server's estimate of its subscribers' downlinks in an open meeting",
        labels=["meeting", "stat"],
    )
    layers = GaugeMetricFamily(
        "confero_meeting_forwarded_layer_streams",
        "Video streams forwarded per temporal layer (subscriber, publisher pairs)",
        labels=["meeting", "layer"],
    )
    for meeting_id, subscribers in sorted(media.subscriber_view().items()):
        rates = sorted(rate for rate, _ in subscribers)
        for stat, value in (("min", rates[0]), ("median", rates[len(rates) // 2]),
                            ("max", rates[-1])):
            estimate.add_metric([meeting_id, stat], value)
        totals: dict[int, int] = {}
        for _, per_layer in subscribers:
            for layer, count in per_layer.items():
                totals[layer] = totals.get(layer, 0) + count
        for layer, count in sorted(totals.items()):
            layers.add_metric([meeting_id, str(layer)], count)
    yield estimate
    yield layers


def make_registry(
    core: SignalingCore,
    shell_counters: Callable[[], dict[str, int]],
    media: MediaRouter | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(core, shell_counters, media))
    return registry
