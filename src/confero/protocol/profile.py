"""The RTP profile confero speaks: payload types, clock rates and header extension ids.

One place for the numbers both ends must agree on (as SDP would negotiate them in WebRTC);
the server's router and the client's media endpoint both import them from here.
"""

from __future__ import annotations

from typing import Final

#: VP8 video (RFC 7741), 90 kHz clock.
VIDEO_PAYLOAD_TYPE: Final = 96
VIDEO_CLOCK: Final = 90_000
#: Opus audio (RFC 7587), 48 kHz clock, 20 ms frames.
AUDIO_PAYLOAD_TYPE: Final = 111
AUDIO_CLOCK: Final = 48_000
AUDIO_FRAME_TICKS: Final = 960
#: Redundant audio (RFC 2198): Opus frames with a copy of the previous one
#: (``protocol/red.py``), on the server's path in ordinary meetings.
RED_PAYLOAD_TYPE: Final = 121
#: Bandwidth-probe padding from the server (``protocol/probe.py``), on a probe SSRC of the
#: meeting: zeros, numbered for transport feedback, otherwise dropped by the receiver.
PROBE_PAYLOAD_TYPE: Final = 127

# RFC 8285 one-byte header extension ids.
#: 8 bytes: the sender's capture time, microseconds on the sender's wall clock (Unix epoch).
#: This is a timestamp carried on the wire, never the ``now`` of a sans-I/O core (which is
#: monotonic seconds); receivers compare it only with their own wall clock.
EXT_CAPTURE_TIME: Final = 1
#: RFC 6464 client-to-mixer audio level: V bit + level in -dBov.
EXT_AUDIO_LEVEL: Final = 2
#: RFC 6465 mixer-to-client levels: one level byte per CSRC, in CSRC order.
EXT_MIXER_LEVELS: Final = 3
#: 2 bytes: transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions).
EXT_TRANSPORT_SEQ: Final = 4
#: Reserved for per-frame video metadata that must stay readable under E2EE.
EXT_VIDEO_FRAME: Final = 5

#: Most CSRCs an RTP header can name (RFC 3550).
MAX_CSRCS: Final = 15
