"""Prometheus export of the server's counters, read at scrape time (no work per message)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from confero.server.core import SignalingCore


class ServerCollector(Collector):
    def __init__(self, core: SignalingCore, shell_counters: Callable[[], dict[str, int]]) -> None:
        self._core = core
        self._shell_counters = shell_counters

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


def make_registry(
    core: SignalingCore, shell_counters: Callable[[], dict[str, int]]
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(core, shell_counters))
    return registry
