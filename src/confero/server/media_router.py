"""The media plane of the server, sans-I/O: SRTP demux, video forwarding, audio mixing.

One UDP port carries everyone's RTP and RTCP. A datagram is attributed by its SSRC to
the participant that owns it (SSRCs are handed out at join), authenticated and decrypted
with that participant's SRTP key, and only then trusted: its source address becomes the
participant's media address (so an authenticated packet from a new address moves the
binding, as NAT rebinding needs). Everything else is dropped and counted by reason.

Video is never decoded: each packet is re-protected for, and sent to, every other
participant of the same meeting that has a media address. The router keeps the last
packets of each publisher to answer receivers' NACKs itself, and forwards PLIs to the
publisher at most every ``pli_interval``. Audio goes to the meeting's
:class:`~confero.server.mixer.MeetingMixer`; :meth:`MediaRouter.tick` runs one 20 ms mixing
step for every meeting.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confero.protocol import rtcp
from confero.protocol.nack import RetransmitBuffer
from confero.protocol.profile import (
    AUDIO_FRAME_TICKS,
    AUDIO_PAYLOAD_TYPE,
    EXT_AUDIO_LEVEL,
    EXT_CAPTURE_TIME,
    EXT_MIXER_LEVELS,
    MAX_CSRCS,
    VIDEO_PAYLOAD_TYPE,
)
from confero.protocol.rtp import MAX_PACKET_SIZE, RtpError, RtpPacket, is_rtcp, peek_ssrc
from confero.protocol.signaling import MediaGrant
from confero.protocol.srtp import (
    PROFILE,
    SrtpContext,
    SrtpError,
    encode_key,
    new_master_key,
)
from confero.server.mixer import MeetingMixer
from confero.server.speakers import SpeakerSelector

Address = tuple[str, int]
Datagram = tuple[bytes, Address]

FRAME_TICKS = AUDIO_FRAME_TICKS


@dataclass
class _Peer:
    participant_id: str
    audio_ssrc: int
    video_ssrc: int
    meeting_id: str | None = None
    srtp: SrtpContext | None = None
    address: Address | None = None
    camera: bool = False
    microphone: bool = False
    history: RetransmitBuffer = field(default_factory=lambda: RetransmitBuffer(512))
    last_pli_forwarded: float = float("-inf")
    mix_seq: int = field(default_factory=lambda: secrets.randbelow(1 << 16))
    mix_was_silent: bool = True


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


class MediaRouter:
    def __init__(
        self,
        port: int,
        *,
        host: str = "",
        pli_interval: float = 0.5,
        mixer_factory: Callable[[], MeetingMixer] = MeetingMixer,
    ) -> None:
        self.port = port
        self.host = host
        self.pli_interval = pli_interval
        self._mixer_factory = mixer_factory
        self._peers: dict[str, _Peer] = {}
        self._by_ssrc: dict[int, _Peer] = {}
        self._meetings: dict[str, _Meeting] = {}
        #: Datagrams dropped, by reason; and other events worth a counter.
        self.counters: Counter[str] = Counter()
        # what ended meetings had forwarded, so /metrics counters never go backwards
        self._ended_packets = 0
        self._ended_bytes = 0

    # ------------------------------------------------------------------ signaling side

    def reserve(self, participant_id: str) -> tuple[int, int]:
        peer = self._peers.get(participant_id)
        if peer is None:
            audio, video = self._new_ssrc(), self._new_ssrc()
            peer = _Peer(participant_id, audio, video)
            self._peers[participant_id] = peer
            self._by_ssrc[audio] = self._by_ssrc[video] = peer
        return peer.audio_ssrc, peer.video_ssrc

    def admit(self, participant_id: str, meeting_id: str, *, e2ee: bool = False
              ) -> MediaGrant:
        self.reserve(participant_id)
        peer = self._peers[participant_id]
        self._leave_meeting(peer)
        key_up, key_down = new_master_key(), new_master_key()
        peer.srtp = SrtpContext(tx_key=key_down, rx_key=key_up)
        peer.meeting_id = meeting_id
        peer.address = None
        peer.history = RetransmitBuffer(512)
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
        )

    def release(self, participant_id: str) -> None:
        """Out of the meeting: keys, address and SSRCs all go. A later join gets new SSRCs,
        so nobody's SRTP or jitter-buffer state for the old stream can get in the way."""
        peer = self._peers.pop(participant_id, None)
        if peer is None:
            return
        self._leave_meeting(peer)
        self._by_ssrc.pop(peer.audio_ssrc, None)
        self._by_ssrc.pop(peer.video_ssrc, None)

    def forget(self, participant_id: str) -> None:
        self.release(participant_id)

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
        peer.address = None
        peer.camera = peer.microphone = False

    def set_media(self, participant_id: str, camera: bool, microphone: bool) -> None:
        peer = self._peers.get(participant_id)
        if peer is not None:
            peer.camera, peer.microphone = camera, microphone

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

    def handle_datagram(self, data: bytes, address: Address, now: float) -> list[Datagram]:
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
        if peer.address != address:
            if peer.address is not None:
                self.counters["address_moved"] += 1
            peer.address = address
        if control:
            return self._on_rtcp(peer, plain, now)
        return self._on_rtp(peer, plain, now)

    def _on_rtp(self, peer: _Peer, plain: bytes, now: float) -> list[Datagram]:
        try:
            packet = RtpPacket.parse(plain)
        except RtpError:
            self.counters["dropped_malformed"] += 1
            return []
        meeting = self._meetings[peer.meeting_id]  # type: ignore[index]
        meeting.received_packets += 1
        meeting.received_bytes += len(plain)
        if packet.ssrc == peer.video_ssrc and packet.payload_type == VIDEO_PAYLOAD_TYPE:
            peer.history.store(packet.sequence_number, plain)
            return self._fan_out(meeting, peer, plain, rtcp_packet=False)
        if packet.ssrc == peer.audio_ssrc and packet.payload_type == AUDIO_PAYLOAD_TYPE:
            level_ext = packet.extensions.get(EXT_AUDIO_LEVEL)
            level = level_ext[0] & 0x7F if level_ext else None
            if meeting.speakers is not None:
                return self._forward_e2ee_audio(meeting, peer, plain, level, now)
            meeting.mixer.push(peer.participant_id, packet.timestamp, packet.payload, level, now)
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
        return self._fan_out(meeting, peer, plain, rtcp_packet=False)

    def _fan_out(
        self, meeting: _Meeting, sender: _Peer, plain: bytes, *, rtcp_packet: bool
    ) -> list[Datagram]:
        out: list[Datagram] = []
        for pid in meeting.members:
            if pid == sender.participant_id:
                continue
            receiver = self._peers[pid]
            if receiver.address is None or receiver.srtp is None:
                continue
            try:
                protected = (
                    receiver.srtp.protect_rtcp(plain) if rtcp_packet
                    else receiver.srtp.protect_rtp(plain)
                )
            except SrtpError:
                self.counters["protect_failed"] += 1  # one receiver's problem, not all
                continue
            out.append((protected, receiver.address))
        meeting.forwarded_packets += len(out)
        meeting.forwarded_bytes += len(plain) * len(out)
        return out

    def _on_rtcp(self, peer: _Peer, plain: bytes, now: float) -> list[Datagram]:
        try:
            packets = rtcp.parse_compound(plain)
        except rtcp.RtcpError:
            self.counters["dropped_malformed"] += 1
            return []
        out: list[Datagram] = []
        for packet in packets:
            if isinstance(packet, rtcp.Nack):
                out += self._answer_nack(peer, packet)
            elif isinstance(packet, rtcp.Pli):
                out += self._forward_pli(peer, packet, now)
        return out

    def _publisher_in_meeting(self, receiver: _Peer, media_ssrc: int) -> _Peer | None:
        publisher = self._by_ssrc.get(media_ssrc)
        if (
            publisher is None
            or publisher is receiver
            or publisher.meeting_id != receiver.meeting_id  # never across meetings
            or publisher.srtp is None
        ):
            self.counters["dropped_feedback_foreign"] += 1
            return None
        return publisher

    def _answer_nack(self, receiver: _Peer, nack: rtcp.Nack) -> list[Datagram]:
        publisher = self._publisher_in_meeting(receiver, nack.media_ssrc)
        if publisher is None or receiver.address is None or receiver.srtp is None:
            return []
        out: list[Datagram] = []
        unknown: list[int] = []
        for seq in nack.lost[:64]:
            plain = publisher.history.get(seq)
            if plain is None:
                unknown.append(seq)
                continue
            try:
                out.append((receiver.srtp.protect_rtp(plain), receiver.address))
            except SrtpError:
                self.counters["protect_failed"] += 1
        self.counters["retransmitted"] += len(out)
        if unknown and publisher.address is not None and publisher.srtp is not None:
            # We never got them either: ask the publisher (its answer reaches everyone).
            request = rtcp.Nack(receiver.video_ssrc, publisher.video_ssrc, unknown).pack()
            out.append((publisher.srtp.protect_rtcp(request), publisher.address))
            self.counters["nack_forwarded"] += 1
        return out

    def _forward_pli(self, receiver: _Peer, pli: rtcp.Pli, now: float) -> list[Datagram]:
        publisher = self._publisher_in_meeting(receiver, pli.media_ssrc)
        if publisher is None or publisher.address is None:
            return []
        if now - publisher.last_pli_forwarded < self.pli_interval:
            self.counters["pli_throttled"] += 1
            return []
        publisher.last_pli_forwarded = now
        self.counters["pli_forwarded"] += 1
        request = rtcp.Pli(receiver.video_ssrc, publisher.video_ssrc).pack()
        assert publisher.srtp is not None
        return [(publisher.srtp.protect_rtcp(request), publisher.address)]

    # ------------------------------------------------------------------ mixing clock

    def tick(self, now: float) -> list[Datagram]:
        """One 20 ms mixing step for every meeting."""
        out: list[Datagram] = []
        for meeting in self._meetings.values():
            meeting.mix_timestamp = (meeting.mix_timestamp + FRAME_TICKS) & 0xFFFFFFFF
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
                extensions = {EXT_CAPTURE_TIME: int(now * 1e6).to_bytes(8, "big")}
                if mixed:
                    extensions[EXT_MIXER_LEVELS] = bytes(level for level, _ in mixed)
                packet = RtpPacket(
                    payload_type=AUDIO_PAYLOAD_TYPE,
                    sequence_number=listener.mix_seq,
                    timestamp=meeting.mix_timestamp,
                    ssrc=meeting.mix_ssrc,
                    payload=payload,
                    marker=listener.mix_was_silent,  # first packet of a talkspurt
                    csrcs=[ssrc for _, ssrc in mixed],
                    extensions=extensions,
                )
                listener.mix_was_silent = False
                plain = packet.serialize()
                meeting.mixed_packets += 1
                meeting.mixed_bytes += len(plain)
                out.append((listener.srtp.protect_rtp(plain), listener.address))
        return out

    # ------------------------------------------------------------------ helpers

    def _new_ssrc(self) -> int:
        while True:
            ssrc = secrets.randbits(32)
            if ssrc and ssrc not in self._by_ssrc:
                return ssrc
