"""The media plane of the server, sans-I/O: SRTP demux, video forwarding, audio mixing.

One UDP port carries everyone's RTP and RTCP. A datagram is attributed by its SSRC to
the participant that owns it (SSRCs are handed out at join), authenticated and decrypted
with that participant's SRTP key, and only then trusted. Its source address becomes the
participant's media address only after a consent check (:mod:`confero.protocol.consent`):
the server sends a random nonce there and waits for its echo, so a packet with a forged
source cannot aim media at someone else, while NAT rebinding still works. Everything else
is dropped and counted by reason.

Video is never decoded: each packet is re-protected for, and sent to, every other
participant of the same meeting that has a media address. The router keeps the last
packets of each publisher to answer receivers' NACKs itself, within a byte budget per
receiver that follows the stream's bitrate; what it no longer holds it either drops
(older than its history, or never sent) or asks the publisher for, coalesced to at most
one NACK per publisher every 50 ms. It forwards PLIs to the publisher at most every
``pli_interval``, and drops VP8 keyframes declaring a picture larger than
``max_video_size`` (a "decoder bomb"), with the frames that follow it. Audio goes to the
meeting's :class:`~confero.server.mixer.MeetingMixer`; :meth:`MediaRouter.tick` runs one
20 ms mixing step for every meeting.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confero.protocol import consent, red, rtcp
from confero.protocol.layers import MAX_TID, LayerForwarder, LayerRateMeter
from confero.protocol.nack import RetransmitBuffer
from confero.protocol.profile import (
    AUDIO_CLOCK,
    AUDIO_FRAME_TICKS,
    AUDIO_PAYLOAD_TYPE,
    EXT_AUDIO_LEVEL,
    EXT_CAPTURE_TIME,
    EXT_MIXER_LEVELS,
    MAX_CSRCS,
    PROBE_PAYLOAD_TYPE,
    RED_PAYLOAD_TYPE,
    VIDEO_PAYLOAD_TYPE,
)
from confero.protocol.rtp import (
    MAX_PACKET_SIZE,
    RtpError,
    RtpPacket,
    SequenceUnwrapper,
    is_rtcp,
    peek_ssrc,
    seq_distance,
)
from confero.protocol.signaling import MediaGrant
from confero.protocol.srtp import (
    PROFILE,
    SrtpContext,
    SrtpError,
    encode_key,
    new_master_key,
)
from confero.protocol.token_bucket import TokenBucket
from confero.protocol.twcc import read_transport_seq, transport_seq_offset
from confero.protocol.vp8 import (
    Vp8Descriptor,
    Vp8Error,
    keyframe_dimensions,
    parse_descriptor,
)
from confero.server.downlink import LAYER_INTERVAL, MIX_SHARE_BPS, Downlink
from confero.server.media_limits import RateMeter, UpstreamNacks
from confero.server.mixer import MeetingMixer
from confero.server.speakers import SpeakerSelector

Address = tuple[str, int]
Datagram = tuple[bytes, Address]
#: The host part of a synthetic address ``(STREAM_HOST, n)``: a client whose media comes
#: over a WebSocket because its UDP is blocked (server/media_ws.py); routed like any other.
STREAM_HOST = "tcp"

FRAME_TICKS = AUDIO_FRAME_TICKS
#: Packets of each publisher the server keeps to answer NACKs.
HISTORY_PACKETS = 512
#: At most one consent challenge per participant this often (each is 42 bytes): what a
#: forger can aim at a victim through us is bounded by this, not by what it sends.
CONSENT_RETRY = 0.5
#: Consent freshness, as RFC 7675: the media address is checked again this often, and
#: loses its media when it has not answered for ``CONSENT_EXPIRY``.
CONSENT_REFRESH = 5.0
CONSENT_EXPIRY = 30.0
#: Of one NACK, the sequence numbers looked at, and the most packets answered.
MAX_NACK_SEQS = 64
MAX_RETRANSMIT_PER_NACK = 32
#: A receiver's retransmissions of one stream: at most this times the stream's recent
#: bitrate (with a floor, so a quiet stream can still be repaired), in bursts of
#: ``RETRANSMIT_BURST`` seconds' worth.
RETRANSMIT_RATE_FACTOR = 2.0
#: ... and all of a subscriber's retransmissions together at most this share of its
#: downlink estimate: a full link gets no flood of repairs on top (at 500 kbit/s the
#: server once sent 4 000 retransmissions in 30 s into a link that had no room).
RETRANSMIT_DOWNLINK_SHARE = 0.2
#: A paused stream resumes when its base layer fits this many times over.
PAUSE_RESUME_MARGIN = 1.33
#: After a picture moved down to its copy it stays there at least this long, doubling with
#: each move down that follows a short spell up (at most ``SIMULCAST_HOLD_MAX``; back to
#: the start after ``SIMULCAST_HOLD_RESET`` up): each switch costs a keyframe, and a link
#: near the boundary must not flap between the two.
SIMULCAST_HOLD = 2.0
SIMULCAST_HOLD_MAX = 16.0
SIMULCAST_HOLD_RESET = 10.0
#: The first picture (in order of priority) is paused only when its cheapest form needs
#: more than this times the subscriber's video budget: a link a little too slow still
#: shows one picture; one it would flood (and the audio with it) shows none until it
#: recovers, which probing finds out.
FIRST_PICTURE_EXCESS = 2.0
#: A picture moves up from its low copy to the camera when all of the camera fits this
#: many times over (it moves down when not even 15 fps of it fit).
SIMULCAST_UP_MARGIN = 1.1
#: Audio louder than this (-dBov) counts as speaking, for who keeps their picture.
SPOKE_LEVEL = 50
MIN_RETRANSMIT_RATE = 32_000.0
RETRANSMIT_BURST = 1.0
#: Forwarded NACKs: at most one per publisher per interval.
UPSTREAM_NACK_INTERVAL = 0.05
#: A hole asked of a publisher is not asked again within this (or within a little over
#: its round trip, when that is shorter and known).
UPSTREAM_NACK_RETRY = 0.2
#: Largest picture a VP8 keyframe may declare, in either orientation.
DEFAULT_MAX_VIDEO_SIZE = (1920, 1080)
#: Counters of the limits above, exported from the start (at 0) so that a dashboard or
#: an alert can name them before the first attack.
LIMIT_EVENTS = (
    "consent_challenges", "consent_granted", "consent_refreshed", "consent_expired",
    "consent_mismatch", "unconsented_packets",
    "address_moved", "retransmitted", "retransmit_over_budget", "nack_seqs_ignored",
    "nack_dropped_stale", "nack_dropped_unknown", "nack_throttled", "nack_forwarded",
    "dropped_video_too_large",
)


@dataclass
class _VideoStream:
    """One video stream a participant publishes: its camera, or its shared screen (issue
    12). Each has its own sequence numbers, history, repair and layers, so the router
    treats a screen exactly like a camera, under another granted SSRC."""

    ssrc: int
    kind: str  # "camera" or "screen"
    history: RetransmitBuffer = field(default_factory=lambda: RetransmitBuffer(HISTORY_PACKETS))
    last_pli_forwarded: float = float("-inf")
    # the range of sequence numbers seen (unwrapped), its bitrate, its repair
    unwrap: SequenceUnwrapper = field(default_factory=SequenceUnwrapper)
    first: int | None = None
    highest: int | None = None
    rate: RateMeter = field(default_factory=RateMeter)
    refused: bool = False  # since a keyframe too large, until an acceptable one
    upstream: UpstreamNacks = field(
        default_factory=lambda: UpstreamNacks(interval=UPSTREAM_NACK_INTERVAL,
                                              retry=UPSTREAM_NACK_RETRY)
    )
    # its bitrate per temporal layer
    layer_rates: LayerRateMeter = field(default_factory=LayerRateMeter)


@dataclass
class _SimulcastHold:
    until: float = float("-inf")
    backoff: float = 0.0
    up_at: float = float("-inf")


@dataclass
class _Peer:
    participant_id: str
    audio_ssrc: int
    video_ssrc: int
    screen_ssrc: int = 0
    low_ssrc: int = 0
    meeting_id: str | None = None
    srtp: SrtpContext | None = None
    address: Address | None = None
    # as a publisher: its video streams by SSRC (camera, screen)
    videos: dict[int, _VideoStream] = field(default_factory=dict)
    # consent: the address being checked, its nonce, when it was challenged
    candidate: Address | None = None
    nonce: bytes | None = None
    challenged_at: float = float("-inf")
    consented_at: float = float("-inf")
    # publisher stream SSRC -> what this receiver may still cost in retransmissions of it
    retransmit_budget: dict[int, TokenBucket] = field(default_factory=dict)
    mix_seq: int = field(default_factory=lambda: secrets.randbelow(1 << 16))
    probe_seq: int = field(default_factory=lambda: secrets.randbelow(1 << 16))
    mix_was_silent: bool = True
    #: when this participant last sent audio louder than SPOKE_LEVEL (monotonic): who
    #: keeps their picture first on a link too slow for everyone's
    spoke_at: float = float("-inf")
    #: all retransmissions to this participant, within a share of its downlink estimate
    retransmit_total: TokenBucket | None = None
    #: the last mix frame sent to this listener (RTP timestamp, Opus), for RFC 2198
    recent_mix: red.RedHistory = field(default_factory=red.RedHistory)
    # congestion control: our link to this participant, and the feedback on theirs to us
    downlink: Downlink = field(default_factory=Downlink)
    # as a subscriber: publisher stream SSRC -> which of its layers we send here, renumbered
    forwarders: dict[int, LayerForwarder] = field(default_factory=dict)
    #: simulcast switches under way: the SSRC of the form switched to -> the forwarder of
    #: the form it replaces, which keeps flowing until the new form's keyframe goes out
    handovers: dict[int, LayerForwarder] = field(default_factory=dict)
    #: publisher id -> when its picture may next move up from its copy to the camera
    simulcast_holds: dict[str, _SimulcastHold] = field(default_factory=dict)
    #: False: it asked for no video at all (``set_media``): its forwarders stay paused
    receive_video: bool = True

    def new_videos(self) -> None:
        self.videos = {self.video_ssrc: _VideoStream(self.video_ssrc, "camera")}
        if self.screen_ssrc:
            self.videos[self.screen_ssrc] = _VideoStream(self.screen_ssrc, "screen")
        if self.low_ssrc:
            self.videos[self.low_ssrc] = _VideoStream(self.low_ssrc, "camera_low")


@dataclass
class _Source:
    """One picture as a subscriber may get it: a publisher's camera with its low copy
    (simulcast), or its shared screen; each form with this subscriber's forwarder."""

    publisher: _Peer
    screen: bool
    high: tuple[LayerForwarder, _VideoStream] | None = None
    low: tuple[LayerForwarder, _VideoStream] | None = None

    def current(self) -> str:
        """The form forwarded now (or being switched to): "high", "low" or "off"."""
        low_on = self.low is not None and not self.low[0].paused
        high_on = self.high is not None and not self.high[0].paused
        if low_on and high_on:  # a switch under way: the form still waiting is the new one
            assert self.low is not None
            return "low" if self.low[0].awaiting_keyframe else "high"
        return "high" if high_on else "low" if low_on else "off"

    @staticmethod
    def live(pair: tuple[LayerForwarder, _VideoStream] | None, now: float) -> bool:
        return pair is not None and pair[1].layer_rates.cumulative(now)[-1] > 0

    def rate(self, form: str, tid: int, now: float) -> float:
        """Bits per second of ``form`` up to temporal layer ``tid``."""
        pair = self.high if form == "high" else self.low
        if pair is None:
            return 0.0
        return pair[1].layer_rates.cumulative(now)[tid]


@dataclass
class _Meeting:
    members: set[str]
    mixer: MeetingMixer
    mix_ssrc: int
    mix_timestamp: int = field(default_factory=lambda: secrets.randbelow(1 << 32))
    forwarded_packets: int = 0
    forwarded_bytes: int = 0
    #: End-to-end encrypted: audio of the loudest few is forwarded, never mixed.
    speakers: SpeakerSelector | None = None
    #: authenticated RTP media (audio and video) received from the members: the proof
    #: that a peer-to-peer meeting sends the server nothing but keepalives (RTCP)
    received_packets: int = 0
    received_bytes: int = 0
    #: mixed audio packets sent to the members (not counted as forwarded)
    mixed_packets: int = 0
    mixed_bytes: int = 0
    #: the SSRC of bandwidth-probe padding to the members
    probe_ssrc: int = field(default_factory=lambda: secrets.randbits(32) | 1)


class MediaRouter:
    def __init__(
        self,
        port: int,
        *,
        host: str = "",
        pli_interval: float = 0.5,
        mixer_factory: Callable[[], MeetingMixer] = MeetingMixer,
        max_video_size: tuple[int, int] = DEFAULT_MAX_VIDEO_SIZE,
        wall_offset: float = 0.0,
    ) -> None:
        self.port = port
        self.host = host
        self.pli_interval = pli_interval
        self.max_video_size = max_video_size
        #: Wall-clock seconds minus the monotonic ``now`` the shell passes in: only to
        #: stamp the mix's capture-time extension, which receivers compare with their own
        #: wall clock (see "one clock rule" in docs/architecture.md).
        self.wall_offset = wall_offset
        self._mixer_factory = mixer_factory
        self._peers: dict[str, _Peer] = {}
        self._by_ssrc: dict[int, _Peer] = {}
        self._meetings: dict[str, _Meeting] = {}
        self._upstream_pending: set[int] = set()  # streams with NACKs waiting to go
        self._next_layer_choice = 0.0
        #: Datagrams dropped, by reason; and other events worth a counter.
        self.counters: Counter[str] = Counter(dict.fromkeys(LIMIT_EVENTS, 0))
        # what ended meetings had forwarded, so /metrics counters never go backwards
        self._ended_packets = 0
        self._ended_bytes = 0

    # ------------------------------------------------------------------ signaling side

    def reserve(self, participant_id: str) -> tuple[int, int, int, int]:
        """The participant's (audio, camera, screen, camera's low copy) SSRCs: every
        stream it may publish is granted here; RTP on any other SSRC is not its own and
        is dropped."""
        peer = self._peers.get(participant_id)
        if peer is None:
            audio = self._new_ssrc()
            self._by_ssrc[audio] = peer = _Peer(participant_id, audio, 0)
            peer.video_ssrc = self._new_ssrc()
            self._by_ssrc[peer.video_ssrc] = peer
            peer.screen_ssrc = self._new_ssrc()
            self._by_ssrc[peer.screen_ssrc] = peer
            peer.low_ssrc = self._new_ssrc()
            self._by_ssrc[peer.low_ssrc] = peer
            peer.new_videos()
            self._peers[participant_id] = peer
        return peer.audio_ssrc, peer.video_ssrc, peer.screen_ssrc, peer.low_ssrc

    def admit(self, participant_id: str, meeting_id: str, *, e2ee: bool = False
              ) -> MediaGrant:
        self.reserve(participant_id)
        peer = self._peers[participant_id]
        self._leave_meeting(peer)
        key_up, key_down = new_master_key(), new_master_key()
        peer.srtp = SrtpContext(tx_key=key_down, rx_key=key_up)
        peer.meeting_id = meeting_id
        self._reset_media_state(peer)
        meeting = self._meetings.get(meeting_id)
        if meeting is None:
            meeting = _Meeting(set(), self._mixer_factory(), self._new_ssrc(),
                               speakers=SpeakerSelector() if e2ee else None)
            self._meetings[meeting_id] = meeting
        meeting.members.add(participant_id)
        meeting.mixer.add(participant_id)
        return MediaGrant(
            port=self.port,
            srtp_profile=PROFILE,
            key_up=encode_key(key_up),
            key_down=encode_key(key_down),
            audio_ssrc=peer.audio_ssrc,
            video_ssrc=peer.video_ssrc,
            mix_ssrc=meeting.mix_ssrc,
            host=self.host,
            screen_ssrc=peer.screen_ssrc,
            low_ssrc=peer.low_ssrc,
        )

    def rekey(self, participant_id: str) -> MediaGrant | None:
        """Fresh SRTP keys for a member's server path (same SSRCs, address kept): after a
        P2P spell both ends' stream state would be too far behind to accept it again."""
        peer = self._peers.get(participant_id)
        if peer is None or peer.meeting_id is None or peer.srtp is None:
            return None
        meeting = self._meetings.get(peer.meeting_id)
        if meeting is None:
            return None
        key_up, key_down = new_master_key(), new_master_key()
        peer.srtp = SrtpContext(tx_key=key_down, rx_key=key_up)
        self.counters["rekeyed"] += 1
        return MediaGrant(
            port=self.port, srtp_profile=PROFILE, key_up=encode_key(key_up),
            key_down=encode_key(key_down), audio_ssrc=peer.audio_ssrc,
            video_ssrc=peer.video_ssrc, mix_ssrc=meeting.mix_ssrc, host=self.host,
            screen_ssrc=peer.screen_ssrc,
            low_ssrc=peer.low_ssrc,
        )

    def release(self, participant_id: str) -> None:
        """Out of the meeting: keys, address and SSRCs all go. A later join gets new SSRCs,
        so nobody's SRTP or jitter-buffer state for the old stream can get in the way."""
        peer = self._peers.pop(participant_id, None)
        if peer is None:
            return
        self._leave_meeting(peer)
        for ssrc in (peer.audio_ssrc, peer.video_ssrc, peer.screen_ssrc, peer.low_ssrc):
            self._by_ssrc.pop(ssrc, None)

    def set_receive_video(self, participant_id: str, wanted: bool) -> None:
        """A participant that wants no video (a low-bandwidth mode) is forwarded none, and
        its video NACKs and PLIs are ignored. Its forwarders stay, paused, and still see
        every packet so that their numbering runs on; when it wants video again,
        :meth:`_choose_layers` resumes them as for a link that regained room: as many as
        its downlink carries, each from a keyframe asked of the publisher."""
        peer = self._peers.get(participant_id)
        if peer is None or peer.receive_video == wanted:
            return
        peer.receive_video = wanted
        if not wanted:
            peer.handovers.clear()  # no simulcast switch finishes while nothing is sent
            for forwarder in peer.forwarders.values():
                forwarder.pause()
            # nor does the video waiting for its pacing go, nor padding to probe for more
            peer.downlink.paced.clear()
            peer.downlink.paced_bytes = 0
            peer.downlink.wanted_bps = 0.0

    def _leave_meeting(self, peer: _Peer) -> None:
        if peer.meeting_id is None:
            return
        participant_id = peer.participant_id
        meeting = self._meetings.get(peer.meeting_id)
        if meeting is not None:
            meeting.members.discard(participant_id)
            meeting.mixer.remove(participant_id)
            if meeting.speakers is not None:
                meeting.speakers.remove(participant_id)
            if not meeting.members:
                self._ended_packets += meeting.forwarded_packets
                self._ended_bytes += meeting.forwarded_bytes
                del self._meetings[peer.meeting_id]
        peer.meeting_id = None
        peer.srtp = None  # old keys die with the membership
        self._reset_media_state(peer)
        if meeting is not None:
            for pid in meeting.members:
                other = self._peers[pid]
                other.simulcast_holds.pop(participant_id, None)
                for ssrc in (peer.video_ssrc, peer.screen_ssrc, peer.low_ssrc):
                    other.retransmit_budget.pop(ssrc, None)
                    gone = other.forwarders.pop(ssrc, None)
                    other.handovers.pop(ssrc, None)
                    for key, replaced in list(other.handovers.items()):
                        if replaced is gone:
                            del other.handovers[key]

    @staticmethod
    def _reset_media_state(peer: _Peer) -> None:
        peer.address = peer.candidate = peer.nonce = None
        peer.challenged_at = peer.consented_at = float("-inf")
        peer.new_videos()
        peer.retransmit_budget = {}
        peer.downlink = Downlink()
        peer.forwarders = {}
        peer.handovers = {}
        peer.simulcast_holds = {}

    def on_stream(self, participant_id: str) -> bool:
        """Its media goes over a WebSocket (UDP blocked): it cannot do peer-to-peer."""
        peer = self._peers.get(participant_id)
        return peer is not None and peer.address is not None and peer.address[0] == STREAM_HOST

    def addresses_in_use(self) -> set[Address]:
        """Media addresses, and addresses being consent-checked, of current members."""
        used: set[Address] = set()
        for peer in self._peers.values():
            if peer.address is not None:
                used.add(peer.address)
            if peer.candidate is not None:
                used.add(peer.candidate)
        return used

    # ------------------------------------------------------------------ statistics

    def meeting_stats(self) -> dict[str, tuple[int, int]]:
        """Meeting id -> (forwarded packets, forwarded bytes), for open meetings."""
        return {mid: (m.forwarded_packets, m.forwarded_bytes) for mid, m in self._meetings.items()}

    def meeting_media(self) -> dict[str, dict[str, int]]:
        """Meeting id -> media counters (received, forwarded, mixed; packets and bytes,
        the mixer's frames) for open meetings: what /metrics and the status page show."""
        return {
            mid: {
                "received_packets": m.received_packets,
                "received_bytes": m.received_bytes,
                "forwarded_packets": m.forwarded_packets,
                "forwarded_bytes": m.forwarded_bytes,
                "mixed_packets": m.mixed_packets,
                "mixed_bytes": m.mixed_bytes,
                "mixer_decoded": m.mixer.stats.decoded,
                "mixer_encoded": m.mixer.stats.encoded,
            }
            for mid, m in self._meetings.items()
        }

    def forwarded_totals(self) -> tuple[int, int]:
        packets = self._ended_packets + sum(m.forwarded_packets for m in self._meetings.values())
        size = self._ended_bytes + sum(m.forwarded_bytes for m in self._meetings.values())
        return packets, size

    def mixers(self) -> dict[str, MeetingMixer]:
        return {mid: m.mixer for mid, m in self._meetings.items()}

    # ------------------------------------------------------------------ datagrams

    def handle_datagram(self, data: bytes, address: Address, now: float,
                        arrived_at: float | None = None) -> list[Datagram]:
        """``arrived_at``: when the kernel received it (on a busy server well before
        ``now``): the arrival a participant's congestion feedback reports; everything the
        router sends in answer is timed by ``now``."""
        if len(data) < 12 or len(data) > MAX_PACKET_SIZE or data[0] >> 6 != 2:
            self.counters["dropped_malformed"] += 1
            return []
        try:
            ssrc = peek_ssrc(data)
        except RtpError:
            self.counters["dropped_malformed"] += 1
            return []
        peer = self._by_ssrc.get(ssrc)
        if peer is None or peer.srtp is None or peer.meeting_id is None:
            self.counters["dropped_unknown_ssrc"] += 1
            return []
        control = is_rtcp(data)
        try:
            plain = peer.srtp.unprotect_rtcp(data) if control else peer.srtp.unprotect_rtp(data)
        except SrtpError:
            self.counters["dropped_auth"] += 1  # wrong key, tampered, or replayed
            return []
        if not control:
            return self._check_consent(peer, address, [], now) + self._on_rtp(
                peer, plain, now, now if arrived_at is None else arrived_at)
        try:
            packets = rtcp.parse_compound(plain)
        except rtcp.RtcpError:
            self.counters["dropped_malformed"] += 1
            return []
        return self._check_consent(peer, address, packets, now) + self._on_rtcp(
            peer, packets, now
        )

    # ------------------------------------------------------------------ consent

    def _check_consent(
        self, peer: _Peer, address: Address, packets: list[rtcp.RtcpPacket], now: float
    ) -> list[Datagram]:
        """Media goes to ``peer.address`` only; another source address is challenged (at
        most every ``CONSENT_RETRY``) and becomes the media address when its echo comes
        back from it. The packet itself is still used (it is authenticated): only where
        the server *sends* depends on consent."""
        if address == peer.address and not packets:
            return []  # the common case: media from where media goes
        for packet in packets:
            if not consent.is_response(packet):
                continue
            if peer.candidate == address and peer.nonce and consent.verify(packet, peer.nonce):
                if peer.address is None:
                    self.counters["consent_granted"] += 1
                elif peer.address != address:
                    self.counters["consent_granted"] += 1
                    self.counters["address_moved"] += 1
                else:
                    self.counters["consent_refreshed"] += 1
                peer.address, peer.candidate, peer.nonce = address, None, None
                peer.consented_at = now
            else:
                self.counters["consent_mismatch"] += 1  # stale, or not from the candidate
            return []
        if address == peer.address:
            return []
        if now - peer.challenged_at < CONSENT_RETRY:
            self.counters["unconsented_packets"] += 1
            return []
        return self._challenge(peer, address, now)

    def _challenge(self, peer: _Peer, address: Address, now: float) -> list[Datagram]:
        """Challenge ``address``; again the same nonce if it is already the candidate, so
        that a client slower to answer than ``CONSENT_RETRY`` (a loaded machine, a long
        path) still gets through: a new nonce each time would void every late echo."""
        assert peer.srtp is not None and peer.meeting_id is not None
        if peer.candidate != address or peer.nonce is None:
            peer.candidate, peer.nonce = address, consent.new_nonce()
        peer.challenged_at = now
        challenge = consent.make_challenge(self._meetings[peer.meeting_id].mix_ssrc, peer.nonce)
        self.counters["consent_challenges"] += 1
        return [(peer.srtp.protect_rtcp(challenge), address)]

    def _refresh_consent(self, now: float) -> list[Datagram]:
        """Consent freshness (RFC 7675): the media address is challenged again every
        ``CONSENT_REFRESH``; one that has not answered for ``CONSENT_EXPIRY`` gets nothing
        more until it passes a new check (its owner's next packet starts one)."""
        out: list[Datagram] = []
        for peer in self._peers.values():
            if peer.address is None or peer.srtp is None or peer.meeting_id is None:
                continue
            if now - peer.consented_at > CONSENT_EXPIRY:
                peer.address = None
                self.counters["consent_expired"] += 1
            elif now - max(peer.consented_at, peer.challenged_at) >= CONSENT_REFRESH:
                out += self._challenge(peer, peer.address, now)
        return out

    def _on_rtp(self, peer: _Peer, plain: bytes, now: float,
                arrival: float) -> list[Datagram]:
        try:
            packet = RtpPacket.parse(plain)
        except RtpError:
            self.counters["dropped_malformed"] += 1
            return []
        transport_seq = read_transport_seq(plain)
        if transport_seq is not None:
            peer.downlink.received.on_packet(transport_seq, arrival)
        meeting = self._meetings[peer.meeting_id]  # type: ignore[index]
        meeting.received_packets += 1
        meeting.received_bytes += len(plain)
        stream = peer.videos.get(packet.ssrc)
        if stream is not None and packet.payload_type == VIDEO_PAYLOAD_TYPE:
            if not self._video_acceptable(stream, packet.payload):
                self.counters["dropped_video_too_large"] += 1
                return []
            try:
                descriptor = parse_descriptor(packet.payload)
            except Vp8Error:
                self.counters["dropped_malformed"] += 1
                return []
            self._note_video(stream, packet.sequence_number, len(plain), now)
            stream.layer_rates.on_packet(len(plain), descriptor.tid, now)
            stream.history.store(packet.sequence_number, plain)
            if stream.kind == "screen":
                self.counters["screen_packets"] += 1
            return self._forward_video(meeting, peer, stream, packet, plain, descriptor, now)
        if packet.ssrc == peer.audio_ssrc and packet.payload_type in (AUDIO_PAYLOAD_TYPE,
                                                                     RED_PAYLOAD_TYPE):
            level_ext = packet.extensions.get(EXT_AUDIO_LEVEL)
            level = level_ext[0] & 0x7F if level_ext else None
            if level is not None and level < SPOKE_LEVEL:
                peer.spoke_at = now
            if meeting.speakers is not None:
                return self._forward_e2ee_audio(meeting, peer, plain, level, now)
            payload = packet.payload
            redundant: tuple[tuple[int, bytes], ...] = ()
            if packet.payload_type == RED_PAYLOAD_TYPE:
                try:
                    blocks = red.decode(packet.payload, AUDIO_PAYLOAD_TYPE)
                except red.RedError:
                    self.counters["dropped_malformed"] += 1
                    return []
                payload = blocks[-1].data
                redundant = tuple(((packet.timestamp - block.offset) & 0xFFFFFFFF, block.data)
                                  for block in blocks[:-1])
            meeting.mixer.push(peer.participant_id, packet.timestamp, payload, level, now,
                               redundant=redundant)
            return []
        self.counters["dropped_wrong_stream"] += 1
        return []

    def _forward_e2ee_audio(
        self, meeting: _Meeting, peer: _Peer, plain: bytes, level: int | None, now: float
    ) -> list[Datagram]:
        """E2EE meetings: the server cannot decode (so cannot mix) SFrame-protected Opus.
        The loudest few speakers' packets go unchanged to every other member, who mix."""
        assert meeting.speakers is not None
        if not meeting.speakers.offer(peer.participant_id, level, now):
            self.counters["e2ee_audio_not_selected"] += 1
            return []
        self.counters["e2ee_audio_forwarded"] += 1
        out: list[Datagram] = []
        size = 0
        for pid in meeting.members:
            if pid == peer.participant_id:
                continue
            receiver = self._peers[pid]
            if receiver.address is None or receiver.srtp is None:
                continue
            stamped = receiver.downlink.stamp(plain, now)  # its own congestion control
            try:
                out.append((receiver.srtp.protect_rtp(stamped), receiver.address))
            except SrtpError:
                self.counters["protect_failed"] += 1
                continue
            size += len(stamped)
        meeting.forwarded_packets += len(out)
        meeting.forwarded_bytes += size
        return out

    def _video_acceptable(self, stream: _VideoStream, payload: bytes) -> bool:
        """False for a keyframe declaring more than ``max_video_size`` (either way round)
        and for every packet after it up to the next acceptable keyframe: the frames in
        between predict from the refused one, nobody could decode them."""
        dimensions = keyframe_dimensions(payload)
        if dimensions is not None:
            width, height = dimensions
            most_w, most_h = self.max_video_size
            fits = (width <= most_w and height <= most_h) or (
                width <= most_h and height <= most_w
            )
            stream.refused = not fits
        return not stream.refused

    def _note_video(self, stream: _VideoStream, seq: int, size: int, now: float) -> None:
        value = stream.unwrap.unwrap(seq)
        if stream.first is None or value < stream.first:
            stream.first = value
        if stream.highest is None or value > stream.highest:
            stream.highest = value
        stream.rate.add(size, now)

    def _forward_video(self, meeting: _Meeting, sender: _Peer, stream: _VideoStream,
                       packet: RtpPacket, plain: bytes, descriptor: Vp8Descriptor,
                       now: float) -> list[Datagram]:
        """Each subscriber gets the temporal layers its downlink carries, renumbered so a
        dropped layer leaves no hole, numbered for its own congestion control.

        The copy for each subscriber is the publisher's bytes with its sequence number
        (and PictureID, when layers are dropped) patched in place: rebuilding the packet
        per subscriber cost about a third of the server's time per forwarded packet."""
        out: list[Datagram] = []
        size = 0
        # where the payload starts in ``plain`` (None: padded, rebuild instead)
        payload_at = None if plain[0] & 0x20 else len(plain) - len(packet.payload)
        # extension 4 sits in the header, which the copies share
        seq_at = transport_seq_offset(plain) if payload_at is not None else None
        for pid in meeting.members:
            if pid == sender.participant_id:
                continue
            receiver = self._peers[pid]
            if receiver.address is None or receiver.srtp is None:
                continue
            forwarder = receiver.forwarders.get(stream.ssrc)
            if forwarder is None:
                forwarder = receiver.forwarders[stream.ssrc] = LayerForwarder()
                if stream.kind == "camera_low":
                    forwarder.pause()  # the camera itself until the estimate says otherwise
            if not receiver.receive_video:  # paused: only its numbering moves on
                forwarder.pause()
                forwarder.forward_fields(packet, descriptor)
                self.counters["video_not_wanted"] += 1
                continue
            fields = forwarder.forward_fields(packet, descriptor)
            if fields is None:
                self.counters["video_layer_dropped"] += 1
                continue
            if receiver.handovers:  # a simulcast switch: the new form's keyframe is out
                replaced = receiver.handovers.pop(stream.ssrc, None)
                if replaced is not None:
                    replaced.pause()
            sub_seq, payload = fields
            seq = sub_seq.to_bytes(2, "big")
            if payload_at is None:
                copy = RtpPacket(packet.payload_type, sub_seq, packet.timestamp, packet.ssrc,
                                 payload, packet.marker, list(packet.csrcs),
                                 dict(packet.extensions)).serialize()
            elif payload is packet.payload:
                copy = plain[:2] + seq + plain[4:]
            else:  # the descriptor was rewritten (PictureID): same header, new payload
                copy = plain[:2] + seq + plain[4:payload_at] + payload
            for stamped in receiver.downlink.pace(copy, now, seq_at):
                try:
                    out.append((receiver.srtp.protect_rtp(stamped), receiver.address))
                except SrtpError:
                    self.counters["protect_failed"] += 1  # one receiver's problem, not all
                    continue
                size += len(stamped)
        meeting.forwarded_packets += len(out)
        meeting.forwarded_bytes += size
        return out

    def _choose_layers(self, now: float) -> list[Datagram]:
        out: list[Datagram] = []
        for meeting in self._meetings.values():
            for pid in meeting.members:
                receiver = self._peers[pid]
                if receiver.forwarders and receiver.receive_video:
                    out += self._choose_for(receiver, now)
        return out

    def _sources(self, receiver: _Peer, now: float) -> list[_Source]:
        """The receiver's forwarders grouped by picture: a camera with its low copy, a
        screen alone; in order of priority (shared screens first, then whoever spoke
        last)."""
        sources: dict[tuple[str, bool], _Source] = {}
        for ssrc, forwarder in receiver.forwarders.items():
            publisher = self._by_ssrc.get(ssrc)
            stream = publisher.videos.get(ssrc) if publisher is not None else None
            if publisher is None or stream is None:
                continue
            key = (publisher.participant_id, stream.kind == "screen")
            source = sources.get(key)
            if source is None:
                source = sources[key] = _Source(publisher, stream.kind == "screen")
            if stream.kind == "camera_low":
                source.low = (forwarder, stream)
            else:
                source.high = (forwarder, stream)
        ordered = [s for s in sources.values() if s.high is not None or s.low is not None]
        ordered.sort(key=lambda s: (not s.screen, -s.publisher.spoke_at))
        return ordered

    def _choose_for(self, receiver: _Peer, now: float) -> list[Datagram]:
        """Which pictures the receiver's downlink estimate carries, at which resolution
        (a camera or its low copy, simulcast), and of each the most temporal layers.

        First every picture gets its cheapest form (the low copy's base layer, else the
        camera's); when even those do not all fit, pictures are paused in order of
        priority (the first only on a link it would flood): a link that carries one
        picture gets one smooth picture instead of frozen ones and a queue that also
        drowns its audio. Then, in order of priority, a picture moves up to the full-size
        camera where all of it fits with a tenth of headroom (and back down once not even
        15 fps of it fit). A paused picture resumes with a third of headroom, from a
        keyframe asked of its publisher, as does a copy moving up; the form it replaces
        keeps flowing until that keyframe goes out (:meth:`_forward_video`), so a switch
        shows no gap."""
        out: list[Datagram] = []
        budget = float(receiver.downlink.video_share(1))
        plan: list[tuple[_Source, str]] = []
        sources = self._sources(receiver, now)
        for source in sources:
            current = source.current()
            cheap = "low" if source.live(source.low, now) else "high"
            base = source.rate(cheap, 0, now)
            needed = base * (PAUSE_RESUME_MARGIN if current == "off" else 1.0)
            # the first picture is kept on a link a little too slow for it (its layers
            # or its copy may still fit), not on one it would flood
            if needed > budget * (FIRST_PICTURE_EXCESS if not plan else 1.0):
                plan.append((source, "off"))
                continue
            plan.append((source, cheap))
            budget -= base
        for index, (source, choice) in enumerate(plan):
            if choice != "low" or source.high is None:
                continue
            current = source.current()
            hold = receiver.simulcast_holds.setdefault(source.publisher.participant_id,
                                                       _SimulcastHold())
            if current != "high" and now < hold.until:
                continue  # moved down lately: wait before trying the camera again
            cost = source.rate("high", 1, now) - source.rate("low", 0, now)
            # up only where the whole camera fits (an estimate a little above the link,
            # as a delay-based one runs before it backs off, must not tempt it); down
            # once not even 15 fps of it do
            needed = (source.rate("high", 1, now) if current == "high"
                      else source.rate("high", MAX_TID, now) * SIMULCAST_UP_MARGIN)
            if needed <= budget + source.rate("low", 0, now):
                plan[index] = (source, "high")
                budget -= cost
                if current != "high":
                    hold.up_at = now
            elif current == "high":  # down: hold off the next move up, longer each time
                stable = now - hold.up_at >= SIMULCAST_HOLD_RESET
                hold.backoff = SIMULCAST_HOLD if stable or not hold.backoff else min(
                    2 * hold.backoff, SIMULCAST_HOLD_MAX)
                hold.until = now + hold.backoff
        # temporal layers: each picture in order of priority gets what the others' base
        # layers leave it
        remaining = float(receiver.downlink.video_share(1))
        bases = [source.rate(choice, 0, now) for source, choice in plan if choice != "off"]
        carried = 0
        limited = False  # some picture gets less than its best: probing may find room
        for source, choice in plan:
            out += self._apply_choice(receiver, source, choice, now)
            best = "high" if source.live(source.high, now) else "low"
            if choice == "off":
                limited = limited or source.rate(best, 0, now) > 0
                continue
            limited = limited or choice != best
            pair = source.high if choice == "high" else source.low
            assert pair is not None
            forwarder, stream = pair
            carried += 1
            available = remaining - sum(bases[carried:])
            tid = stream.layer_rates.choose_layer(available, now,
                                                  current=forwarder.current_tid)
            forwarder.set_target(tid)
            remaining -= stream.layer_rates.cumulative(now)[tid]
            rates = stream.layer_rates.cumulative(now)
            limited = limited or rates[tid] < rates[-1]
        # what full quality would take, with the margins a move up needs
        receiver.downlink.wanted_bps = (MIX_SHARE_BPS + SIMULCAST_UP_MARGIN * sum(
            max(source.rate("high", MAX_TID, now), source.rate("low", MAX_TID, now))
            for source, _ in plan)) if limited else 0.0
        return out

    def _apply_choice(self, receiver: _Peer, source: _Source, choice: str,
                      now: float) -> list[Datagram]:
        """Make ``choice`` ("high", "low" or "off") the form ``source`` reaches
        ``receiver`` in. A newly chosen form resumes from a keyframe; the one it replaces
        is paused when that keyframe goes out (``receiver.handovers``), or at once if it
        never delivered anything itself."""
        target = source.high if choice == "high" else source.low if choice == "low" else None
        out: list[Datagram] = []
        for pair in (source.high, source.low):
            if pair is None or pair is target or pair[0].paused:
                continue
            forwarder, stream = pair
            receiver.handovers.pop(stream.ssrc, None)  # a switch to it is abandoned
            target_flowing = target is not None and not (
                target[0].paused or target[0].awaiting_keyframe)
            if target is None or forwarder.awaiting_keyframe or target_flowing:
                forwarder.pause()
                if target is not None and receiver.handovers.get(target[1].ssrc) is forwarder:
                    del receiver.handovers[target[1].ssrc]
            else:
                receiver.handovers[target[1].ssrc] = forwarder
        if target is None:
            return out
        forwarder, stream = target
        if forwarder.paused:
            forwarder.resume()
            if target[1].ssrc in receiver.handovers:
                self.counters["simulcast_switches"] += 1
            out += self._request_keyframe(source.publisher, stream, receiver, now,
                                          "pli_for_resume")
        elif forwarder.awaiting_keyframe:  # the keyframe asked for did not come (yet)
            out += self._request_keyframe(source.publisher, stream, receiver, now,
                                          "pli_for_resume")
        return out

    def _request_keyframe(self, publisher: _Peer, stream: _VideoStream, receiver: _Peer,
                          now: float, counter: str) -> list[Datagram]:
        """A PLI to ``publisher`` for ``stream`` on behalf of ``receiver``, at most one per
        ``pli_interval`` per stream whoever asks (counted under ``counter``)."""
        if publisher.address is None or publisher.srtp is None:
            return []
        if now - stream.last_pli_forwarded < self.pli_interval:
            self.counters["pli_throttled"] += 1
            return []
        stream.last_pli_forwarded = now
        self.counters[counter] += 1
        request = rtcp.Pli(receiver.video_ssrc, stream.ssrc).pack()
        return [(publisher.srtp.protect_rtcp(request), publisher.address)]

    def _on_rtcp(
        self, peer: _Peer, packets: list[rtcp.RtcpPacket], now: float
    ) -> list[Datagram]:
        out: list[Datagram] = []
        for packet in packets:
            if isinstance(packet, rtcp.TransportFeedback):
                peer.downlink.on_feedback(packet, now)
            elif isinstance(packet, rtcp.Nack | rtcp.Pli) and not peer.receive_video:
                self.counters["video_feedback_not_wanted"] += 1
            elif isinstance(packet, rtcp.Nack):
                out += self._answer_nack(peer, packet, now)
            elif isinstance(packet, rtcp.Pli):
                out += self._forward_pli(peer, packet, now)
        return out

    def _publisher_in_meeting(self, receiver: _Peer, media_ssrc: int
                              ) -> tuple[_Peer, _VideoStream] | None:
        """The publisher of video stream ``media_ssrc`` if it shares the receiver's meeting."""
        publisher = self._by_ssrc.get(media_ssrc)
        stream = publisher.videos.get(media_ssrc) if publisher is not None else None
        if (
            publisher is None
            or stream is None
            or publisher is receiver
            or publisher.meeting_id != receiver.meeting_id  # never across meetings
            or publisher.srtp is None
        ):
            self.counters["dropped_feedback_foreign"] += 1
            return None
        return publisher, stream

    def _answer_nack(self, receiver: _Peer, nack: rtcp.Nack, now: float) -> list[Datagram]:
        """Answer from the history within the receiver's budget; ask the publisher only for
        real holes (inside the history's range, never received), coalesced."""
        found = self._publisher_in_meeting(receiver, nack.media_ssrc)
        if found is None or receiver.address is None or receiver.srtp is None:
            return []
        publisher, stream = found
        out: list[Datagram] = []
        if len(nack.lost) > MAX_NACK_SEQS:
            self.counters["nack_seqs_ignored"] += len(nack.lost) - MAX_NACK_SEQS
        rate = max(MIN_RETRANSMIT_RATE,
                   RETRANSMIT_RATE_FACTOR * stream.rate.rate(now))
        budget = receiver.retransmit_budget.get(stream.ssrc)
        if budget is None:
            budget = receiver.retransmit_budget[stream.ssrc] = TokenBucket(
                rate, rate * RETRANSMIT_BURST, now)
        # the budget follows the stream's bitrate
        budget.rate, budget.burst = rate, rate * RETRANSMIT_BURST
        # and the receiver's link: all its repairs within a share of its estimate (bytes)
        link_rate = RETRANSMIT_DOWNLINK_SHARE * receiver.downlink.target_bps / 8
        total = receiver.retransmit_total
        if total is None:
            total = receiver.retransmit_total = TokenBucket(link_rate, link_rate, now)
        total.rate, total.burst = link_rate, link_rate * RETRANSMIT_BURST
        forwarder = receiver.forwarders.get(stream.ssrc)
        for asked in nack.lost[:MAX_NACK_SEQS]:
            # the receiver numbers as we renumbered for it; the history as the publisher
            seq = forwarder.publisher_sequence(asked) if forwarder is not None else asked
            if seq is None:
                self.counters["nack_dropped_unknown"] += 1
                continue
            plain = stream.history.get(seq)
            if plain is None:
                self._ask_upstream(stream, seq, now, publisher.downlink.bwe.rtt)
                continue
            if forwarder is not None:
                resent = forwarder.resend(RtpPacket.parse(plain))
                if resent is None:
                    continue
                plain = resent.serialize()
            if (len(out) >= MAX_RETRANSMIT_PER_NACK or not budget.allow(now, len(plain))
                    or not total.allow(now, len(plain))):
                self.counters["retransmit_over_budget"] += 1
                continue
            try:
                stamped = receiver.downlink.stamp(plain, now)
                out.append((receiver.srtp.protect_rtp(stamped), receiver.address))
            except SrtpError:
                self.counters["protect_failed"] += 1
        self.counters["retransmitted"] += len(out)
        return out + self._flush_upstream(publisher, stream, now)

    def _ask_upstream(self, stream: _VideoStream, seq: int, now: float,
                      rtt: float | None) -> None:
        """``rtt``: the publisher's round trip (from its downlink's feedback), if known: a
        hole is asked of it again once an answer is overdue, not after a fixed 200 ms
        (which, with receivers that gave up sooner, meant one try per hole)."""
        if rtt is not None:
            stream.upstream.retry = min(UPSTREAM_NACK_RETRY,
                                        max(UPSTREAM_NACK_INTERVAL, 1.2 * rtt + 0.01))
        highest, first = stream.highest, stream.first
        if highest is None or first is None:
            self.counters["nack_dropped_unknown"] += 1
            return
        value = highest + seq_distance(seq, highest & 0xFFFF)
        if value > highest:
            self.counters["nack_dropped_unknown"] += 1  # never sent (yet)
        elif value < max(first, highest - HISTORY_PACKETS + 1):
            self.counters["nack_dropped_stale"] += 1  # older than anything we keep
        elif not stream.upstream.add(seq, now):
            self.counters["nack_throttled"] += 1
        else:
            self._upstream_pending.add(stream.ssrc)

    def _flush_upstream(self, publisher: _Peer, stream: _VideoStream,
                        now: float) -> list[Datagram]:
        """The publisher's coalesced NACK, if one is due (its answer reaches everyone)."""
        seqs = stream.upstream.due(now)
        if not stream.upstream.pending:
            self._upstream_pending.discard(stream.ssrc)
        if not seqs or publisher.address is None or publisher.srtp is None:
            return []
        assert publisher.meeting_id is not None
        sender = self._meetings[publisher.meeting_id].mix_ssrc  # on behalf of all receivers
        request = rtcp.Nack(sender, stream.ssrc, seqs).pack()
        self.counters["nack_forwarded"] += 1
        return [(publisher.srtp.protect_rtcp(request), publisher.address)]

    def _forward_pli(self, receiver: _Peer, pli: rtcp.Pli, now: float) -> list[Datagram]:
        found = self._publisher_in_meeting(receiver, pli.media_ssrc)
        if found is None:
            return []
        publisher, stream = found
        forwarder = receiver.forwarders.get(stream.ssrc)
        if forwarder is not None and forwarder.paused:
            # a stream we stopped sending it (paused, or the unused form of a simulcast
            # picture): its receiver may still be waiting on a frame it will never get;
            # a keyframe every half second for nobody would only crowd the links
            self.counters["pli_for_paused_ignored"] += 1
            return []
        return self._request_keyframe(publisher, stream, receiver, now, "pli_forwarded")

    # ------------------------------------------------------------------ mixing clock

    def tick(self, now: float) -> list[Datagram]:
        """One 20 ms mixing step for every meeting, the NACKs that waited their turn, and
        consent freshness checks."""
        out = self._refresh_consent(now) + self._congestion_tick(now)
        for ssrc in list(self._upstream_pending):
            publisher = self._by_ssrc.get(ssrc)
            stream = publisher.videos.get(ssrc) if publisher is not None else None
            if publisher is None or stream is None:
                self._upstream_pending.discard(ssrc)
            else:
                out += self._flush_upstream(publisher, stream, now)
        for meeting in self._meetings.values():
            meeting.mix_timestamp = (meeting.mix_timestamp + FRAME_TICKS) & 0xFFFFFFFF
            out += self._release_paced(meeting, now) + self._probe(meeting, now)
            mixes = meeting.mixer.mix()
            levels = meeting.mixer.levels
            for pid in meeting.members:
                listener = self._peers[pid]
                payload = mixes.get(pid)
                if payload is None:
                    listener.mix_was_silent = True
                    continue
                if listener.address is None or listener.srtp is None:
                    continue
                listener.mix_seq = (listener.mix_seq + 1) & 0xFFFF
                # who is in this listener's mix, loudest first (RFC 3550 CSRC list)
                mixed = sorted(
                    ((level, self._peers[speaker].audio_ssrc)
                     for speaker, level in levels.items() if speaker != pid),
                )[:MAX_CSRCS]
                capture_us = int((now + self.wall_offset) * 1e6)  # the mix's own capture
                extensions = {EXT_CAPTURE_TIME: capture_us.to_bytes(8, "big")}
                if mixed:
                    extensions[EXT_MIXER_LEVELS] = bytes(level for level, _ in mixed)
                wire_type, wire_payload = AUDIO_PAYLOAD_TYPE, payload
                if listener.mix_was_silent:
                    listener.recent_mix.clear()
                # RFC 2198: the previous mix frame rides along (a lost packet costs the
                # listener nothing), and the one before it too on a lossy link
                bwe = listener.downlink.bwe
                wrapped = listener.recent_mix.wrap(
                    meeting.mix_timestamp, payload, AUDIO_PAYLOAD_TYPE,
                    red.copies_for(bwe.loss.loss_fraction, bwe.target_bps))
                if wrapped is not None:
                    wire_type, wire_payload = RED_PAYLOAD_TYPE, wrapped
                packet = RtpPacket(
                    payload_type=wire_type,
                    sequence_number=listener.mix_seq,
                    timestamp=meeting.mix_timestamp,
                    ssrc=meeting.mix_ssrc,
                    payload=wire_payload,
                    marker=listener.mix_was_silent,  # first packet of a talkspurt
                    csrcs=[ssrc for _, ssrc in mixed],
                    extensions=extensions,
                )
                listener.mix_was_silent = False
                plain = listener.downlink.stamp(packet.serialize(), now)
                meeting.mixed_packets += 1
                meeting.mixed_bytes += len(plain)
                out.append((listener.srtp.protect_rtp(plain), listener.address))
        return out

    def _release_paced(self, meeting: _Meeting, now: float) -> list[Datagram]:
        """Forwarded video that waited for its member's pacing budget and may go now."""
        out: list[Datagram] = []
        for pid in meeting.members:
            listener = self._peers[pid]
            if not listener.downlink.paced:
                continue
            released = listener.downlink.release(now)
            if listener.address is None or listener.srtp is None:
                continue
            for stamped in released:
                out.append((listener.srtp.protect_rtp(stamped), listener.address))
                meeting.forwarded_packets += 1
                meeting.forwarded_bytes += len(stamped)
        return out

    def _probe(self, meeting: _Meeting, now: float) -> list[Datagram]:
        """Bandwidth-probe padding for members whose link may carry more than their
        estimate (:mod:`confero.protocol.probe`): zeros on the meeting's probe SSRC (a
        stream of its own: SRTP refuses a sequence that jumps about on one SSRC), numbered
        for transport feedback like everything else the member gets."""
        out: list[Datagram] = []
        for pid in meeting.members:
            listener = self._peers[pid]
            if listener.address is None or listener.srtp is None or not listener.forwarders:
                continue
            for size in listener.downlink.padding(now, FRAME_TICKS / AUDIO_CLOCK):
                listener.probe_seq = (listener.probe_seq + 1) & 0xFFFF
                packet = RtpPacket(PROBE_PAYLOAD_TYPE, listener.probe_seq,
                                   meeting.mix_timestamp, meeting.probe_ssrc, bytes(size))
                plain = listener.downlink.stamp(packet.serialize(), now)
                out.append((listener.srtp.protect_rtp(plain), listener.address))
                self.counters["probe_packets"] += 1
        return out

    def _congestion_tick(self, now: float) -> list[Datagram]:
        """Feedback to each participant on what we received from it (TWCC, every 50 ms),
        the downlink estimates' own clock, and the layer choices that follow them."""
        out: list[Datagram] = []
        for meeting in self._meetings.values():
            for pid in meeting.members:
                peer = self._peers[pid]
                peer.downlink.tick(now)
                if peer.address is None or peer.srtp is None:
                    continue
                if peer.downlink.received.feedback_due(now):
                    for feedback in peer.downlink.received.build_feedback(
                        now, meeting.mix_ssrc, peer.video_ssrc
                    ):
                        out.append((peer.srtp.protect_rtcp(feedback), peer.address))
        if now >= self._next_layer_choice:
            self._next_layer_choice = now + LAYER_INTERVAL
            out += self._choose_layers(now)
        return out

    def downlink_estimates(self) -> dict[str, int]:
        """Participant id -> the server's estimate of its downlink (bit/s)."""
        return {pid: peer.downlink.target_bps for pid, peer in self._peers.items()
                if peer.meeting_id is not None}

    def subscriber_view(self) -> dict[str, list[tuple[int, dict[int, int]]]]:
        """Meeting id -> per subscriber: (downlink estimate in bit/s, {temporal layer
        forwarded: how many video streams (cameras, shared screens)}) -- what /metrics
        summarises per meeting, so an
        operator sees who is being served less than full video, and why."""
        out: dict[str, list[tuple[int, dict[int, int]]]] = {}
        for peer in self._peers.values():
            if peer.meeting_id is None:
                continue
            layers: dict[int, int] = {}
            for forwarder in peer.forwarders.values():
                if forwarder.paused:
                    continue  # a paused picture, or the unused form of a simulcast one
                layers[forwarder.current_tid] = layers.get(forwarder.current_tid, 0) + 1
            out.setdefault(peer.meeting_id, []).append((peer.downlink.target_bps, layers))
        return out

    # ------------------------------------------------------------------ helpers

    def _new_ssrc(self) -> int:
        while True:
            ssrc = secrets.randbits(32)
            if ssrc and ssrc not in self._by_ssrc:
                return ssrc
