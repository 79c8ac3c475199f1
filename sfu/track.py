"""Forwarding of one publisher track to its subscribers, at the RTP level.

An :class:`UpTrack` receives the publisher's decrypted RTP packets as bytes.
For each packet it strips the header extensions and CSRCs, writes its own
outgoing SSRC (one per up track, shared by all its subscribers: SSRCs only
need to be unique inside each subscriber's own RTP session), keeps the
publisher's sequence number and timestamp, stores the packet in a history for
NACKs, then for each group of subscribers sharing a payload type writes that
payload type and hands the same bytes to each subscriber's SRTP session and
socket. The payload bytes are never looked at.

A :class:`DownTrack` is one subscriber's view of an up track: its payload
type and the RTCP feedback it sends (NACK answered from the history, PLI and
FIR relayed to the publisher as PLI at most once per second).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

from aiortc import clock
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
)

from . import metrics, rtx

if TYPE_CHECKING:
    from .session import Session

logger = logging.getLogger(__name__)

HISTORY_SIZE = 1024  # packets kept per up track for retransmission (power of two)
KEYFRAME_INTERVAL = 1.0  # seconds between two PLIs to one publisher track
MAX_NACK_GAP = 200  # a larger jump in sequence numbers is a reset, not loss
NACK_RETRIES = 3
KEYFRAME_WAIT = 4.0  # seconds a new subscriber waits for a keyframe before starting anyway

_pack_ssrc = struct.Struct("!I").pack

Target = tuple[Any, Any, Any]  # (protect, sendto, addr)


class UpTrack:
    """One media track a publisher sends into a room."""

    def __init__(
        self,
        publisher: Session,
        *,
        kind: str,
        mid: str,
        codec: RTCRtpCodecParameters,
        ssrcs: list[int],
        out_ssrc: int,
        fir_only: bool = False,
    ) -> None:
        self.publisher = publisher
        self.kind = kind
        self.mid = mid
        self.codec = codec
        self.declared_ssrcs = list(ssrcs)
        self.in_ssrc: int | None = ssrcs[0] if ssrcs else None
        self.out_ssrc = out_ssrc
        self.track_id = f"{kind}-{out_ssrc:08x}"
        self.clock_rate = codec.clockRate
        self._ssrc_bytes = _pack_ssrc(out_ssrc)
        self._fir_only = fir_only
        self._nack = kind == "video"
        self.down: list[DownTrack] = []
        # subscribers that joined and wait for the next frame boundary, so
        # that nobody starts with the tail of a frame
        self._pending: list[DownTrack] = []
        self._pending_since = 0.0
        self._frame_start = True  # the next packet starts a frame
        self._codec_name = codec.mimeType.split("/")[-1].lower()
        self._fanout: tuple[tuple[int, tuple[Target, ...]], ...] = ()
        self._history: list[bytes | None] = [None] * HISTORY_SIZE
        self.closed = False
        # the publisher's RTX payload type (RFC 4588) for this track, when negotiated
        self.rtx_payload_type: int | None = None

        # counters, flushed to prometheus in batches
        self.packets = 0
        self.octets = 0
        self.forwarded = 0
        self.forwarded_bytes = 0
        self._flushed = (0, 0, 0)

        # upstream receive statistics (for RR) and loss (for NACK)
        self._base_seq: int | None = None
        self.max_seq: int | None = None
        self._cycles = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._missing: dict[int, int] = {}
        self.last_ts = 0
        self.last_ts_time = 0.0
        self._sr: tuple[int, int, float] | None = None  # (ntp, rtp ts, monotonic)

        # keyframe relay
        self._last_pli = -KEYFRAME_INTERVAL
        self._pli_handle: asyncio.TimerHandle | None = None
        self._pli_wanted = False
        self._fir_seq = 0
        self.keyframe_requests = 0

    # -- the forwarding path -----------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        n = len(data)
        b0 = data[0]
        hlen = 12 + ((b0 & 0x0F) << 2)
        if b0 & 0x10:
            if n < hlen + 4:
                return
            hlen += 4 + (((data[hlen + 2] << 8) | data[hlen + 3]) << 2)
        if n < hlen:
            return
        seq = (data[2] << 8) | data[3]
        self.packets += 1

        # loss and statistics, in the common case one comparison
        last = self.max_seq
        if last is not None and seq == ((last + 1) & 0xFFFF):
            self.max_seq = seq
            if seq == 0:
                self._cycles += 0x10000
        else:
            self._track_sequence(seq)

        ts = (data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7]
        if ts != self.last_ts:
            self.last_ts = ts
            self.last_ts_time = time.monotonic()

        if self._pending and self._frame_start and self._may_start(data, hlen):
            self._activate_pending()
        self._frame_start = data[1] >= 0x80  # marker: the last packet of a frame

        if hlen == 12:
            base = bytearray(data)
        else:
            base = bytearray(data[:12])
            base += data[hlen:]
        base[0] = 0x80 | (b0 & 0x20)
        base[8:12] = self._ssrc_bytes
        self._history[seq & (HISTORY_SIZE - 1)] = bytes(base)

        mbit = base[1] & 0x80
        size = len(base)
        for pt, targets in self._fanout:
            base[1] = mbit | pt
            packet = bytes(base)
            try:
                for protect, sendto, addr in targets:
                    sendto(protect(packet), addr)
            except Exception:  # noqa: BLE001 - one bad subscriber must not stop the others
                self._send_each(packet, targets)
            self.forwarded += len(targets)
            self.forwarded_bytes += len(targets) * size

        if self._pli_wanted and self.in_ssrc is not None:
            self._pli_wanted = False
            self.request_keyframe()

    def on_repair(self, data: bytes) -> bool:
        """A packet the publisher resent over RTX, unwrapped: forwarded like any
        late packet, unless the history already holds it (a duplicate, e.g.
        RTX used as padding). True when it was new."""
        if self.history((data[2] << 8) | data[3]) is not None:
            return False
        self.on_rtp(data)
        return True

    def _send_each(self, packet: bytes, targets: tuple[Target, ...]) -> None:
        for protect, sendto, addr in targets:
            try:
                sendto(protect(packet), addr)
            except Exception as exc:  # noqa: BLE001
                logger.debug("forward failed: %s", exc)

    def _track_sequence(self, seq: int) -> None:
        last = self.max_seq
        if last is None:
            self._base_seq = seq
            self.max_seq = seq
            return
        delta = (seq - last) & 0xFFFF
        if delta == 0:
            return
        if delta < 0x8000:  # forward jump
            if delta <= MAX_NACK_GAP and self._nack:
                for i in range(1, delta):
                    self._missing[(last + i) & 0xFFFF] = 0
                self._send_nack()
            if seq < last:
                self._cycles += 0x10000
            self.max_seq = seq
        else:  # late: a retransmission or reordering
            self._missing.pop(seq, None)

    # -- subscribers ---------------------------------------------------------------------

    def attach(self, down: DownTrack) -> None:
        """Start forwarding to ``down`` at the next keyframe (video) or packet (audio)."""
        if down not in self.down and down not in self._pending:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(down)

    def _may_start(self, data: bytes, hlen: int) -> bool:
        """Whether new subscribers may start with this packet, the first of a
        frame: a keyframe's first packet for VP8/H.264 (only looked at while
        someone waits), or after KEYFRAME_WAIT in case we cannot tell."""
        if self._codec_name == "vp8":
            start = vp8_keyframe_start(data, hlen)
        elif self._codec_name == "h264":
            start = h264_keyframe_start(data, hlen)
        else:
            return True
        return start or time.monotonic() - self._pending_since > KEYFRAME_WAIT

    def _activate_pending(self) -> None:
        self.down.extend(self._pending)
        self._pending.clear()
        self._rebuild()

    def detach(self, down: DownTrack) -> None:
        if down in self._pending:
            self._pending.remove(down)
        if down in self.down:
            self.down.remove(down)
        self._rebuild()

    def _rebuild(self) -> None:
        groups: dict[int, list[Target]] = {}
        for d in self.down:
            if d.target is not None:
                groups.setdefault(d.payload_type, []).append(d.target)
        self._fanout = tuple((pt, tuple(ts)) for pt, ts in groups.items())

    def history(self, seq: int) -> bytes | None:
        packet = self._history[seq & (HISTORY_SIZE - 1)]
        if packet is not None and ((packet[2] << 8) | packet[3]) == seq:
            return packet
        return None

    # -- feedback to the publisher ---------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe: now, or when the 1 s spacing allows."""
        if self.kind != "video" or self.closed:
            return
        if self.in_ssrc is None:
            self._pli_wanted = True
            return
        if self._pli_handle is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_pli + KEYFRAME_INTERVAL - loop.time()
        if wait <= 0:
            self._send_pli()
        else:
            self._pli_handle = loop.call_later(wait, self._deferred_pli)

    def _deferred_pli(self) -> None:
        self._pli_handle = None
        if not self.closed:
            self._send_pli()

    def _send_pli(self) -> None:
        sender = self.publisher.sender
        if sender is None or self.in_ssrc is None:
            self._pli_wanted = True
            return
        self._last_pli = asyncio.get_running_loop().time()
        rtcp_ssrc = self.publisher.rtcp_ssrc
        if self._fir_only:
            self._fir_seq = (self._fir_seq + 1) & 0xFF
            fci = _pack_ssrc(self.in_ssrc) + bytes([self._fir_seq, 0, 0, 0])
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci)
        else:
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=rtcp_ssrc, media_ssrc=self.in_ssrc)
        try:
            sender.send_rtcp(bytes(packet))
        except Exception as exc:  # noqa: BLE001
            logger.debug("PLI failed: %s", exc)
            return
        self.keyframe_requests += 1
        metrics.KEYFRAME_REQUESTS.inc()

    def _send_nack(self) -> None:
        sender = self.publisher.sender
        if sender is None or self.in_ssrc is None or not self._missing:
            return
        lost = sorted(self._missing)[:64]
        packet = RtcpRtpfbPacket(
            fmt=RTCP_RTPFB_NACK, ssrc=self.publisher.rtcp_ssrc, media_ssrc=self.in_ssrc
        )
        packet.lost = lost
        try:
            sender.send_rtcp(bytes(packet))
        except Exception as exc:  # noqa: BLE001
            logger.debug("NACK failed: %s", exc)
            return
        metrics.NACKS_SENT.inc()

    def on_sender_report(self, ntp: int, rtp_ts: int) -> None:
        self._sr = (ntp, rtp_ts, time.monotonic())

    def periodic(self) -> list[Any]:
        """Once a second: RR for the publisher, NACK retries, metrics."""
        self.flush_metrics()
        if self._missing:
            for seq in list(self._missing):
                tries = self._missing[seq] + 1
                if tries > NACK_RETRIES:
                    del self._missing[seq]
                else:
                    self._missing[seq] = tries
            self._send_nack()
        if self.in_ssrc is None or self.max_seq is None or self._base_seq is None:
            return []
        expected = self._cycles + self.max_seq - self._base_seq + 1
        lost = max(0, expected - self.packets)
        exp_int = expected - self._expected_prior
        rec_int = self.packets - self._received_prior
        self._expected_prior, self._received_prior = expected, self.packets
        fraction = 0
        if exp_int > 0 and exp_int > rec_int:
            fraction = min(255, ((exp_int - rec_int) << 8) // exp_int)
        lsr = dlsr = 0
        if self._sr is not None:
            lsr = (self._sr[0] >> 16) & 0xFFFFFFFF
            dlsr = int((time.monotonic() - self._sr[2]) * 65536) & 0xFFFFFFFF
        return [
            RtcpReceiverInfo(
                ssrc=self.in_ssrc,
                fraction_lost=fraction,
                packets_lost=min(lost, (1 << 23) - 1),
                highest_sequence=(self._cycles + self.max_seq) & 0xFFFFFFFF,
                jitter=0,
                lsr=lsr,
                dlsr=dlsr,
            )
        ]

    def clock_now(self) -> tuple[int, int]:
        """(NTP time, RTP timestamp) for a sender report about this track now,
        keeping the publisher's own NTP/RTP mapping when it sent one."""
        now = time.monotonic()
        if self._sr is not None:
            ntp, rtp_ts, at = self._sr
            elapsed = now - at
            return (
                (ntp + int(elapsed * (1 << 32))) & 0xFFFFFFFFFFFFFFFF,
                (rtp_ts + int(elapsed * self.clock_rate)) & 0xFFFFFFFF,
            )
        elapsed = now - self.last_ts_time if self.last_ts_time else 0.0
        return clock.current_ntp_time(), (
            self.last_ts + int(elapsed * self.clock_rate)
        ) & 0xFFFFFFFF

    def flush_metrics(self) -> None:
        p, f, b = self._flushed
        if self.packets != p:
            metrics.PACKETS_RECEIVED.inc(self.packets - p)
        if self.forwarded != f:
            metrics.PACKETS_FORWARDED.inc(self.forwarded - f)
        if self.forwarded_bytes != b:
            metrics.BYTES_FORWARDED.inc(self.forwarded_bytes - b)
        self._flushed = (self.packets, self.forwarded, self.forwarded_bytes)

    def close(self) -> None:
        self.closed = True
        self.flush_metrics()
        if self._pli_handle is not None:
            self._pli_handle.cancel()
            self._pli_handle = None
        self._fanout = ()
        self.down.clear()
        self._pending.clear()


class DownTrack:
    """One subscriber's copy of an up track."""

    def __init__(self, session: Session, up: UpTrack, *, mid: str, payload_type: int) -> None:
        self.session = session
        self.up = up
        self.mid = mid
        self.payload_type = payload_type
        self.ssrc = up.out_ssrc
        # RTX (RFC 4588) toward this subscriber, when it offered it: payload
        # type, SSRC and the RTX stream's own sequence numbers
        self.rtx_payload_type: int | None = None
        self.rtx_ssrc: int | None = None
        self._rtx_ssrc_bytes = b""
        self._rtx_seq = 0
        self.target: Target | None = None
        self._base = (0, 0)
        self.nacks = 0
        self.retransmitted = 0
        self.keyframe_requests = 0

    def start(self, target: Target) -> None:
        if self.up.closed:
            return
        self.target = target
        self._base = (self.up.forwarded, self.up.forwarded_bytes)
        self.up.attach(self)
        self.up.request_keyframe()

    def retarget(self, target: Target | None) -> None:
        self.target = target
        self.up._rebuild()

    def stop(self) -> None:
        self.up.detach(self)
        self.target = None

    def sender_report(self) -> RtcpSrPacket:
        ntp, rtp_ts = self.up.clock_now()
        # counts are the up track's since this subscriber joined: an estimate
        # shared by its subscribers, which is what SR counts are used for
        n = len(self.up.down) or 1
        packets = (self.up.forwarded - self._base[0]) // n
        octets = (self.up.forwarded_bytes - self._base[1]) // n
        return RtcpSrPacket(
            ssrc=self.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=rtp_ts,
                packet_count=packets & 0xFFFFFFFF,
                octet_count=octets & 0xFFFFFFFF,
            ),
        )

    # called by aiortc's RtpRouter for RTCP whose media SSRC is ours; an
    # exception here would end the transport's receive loop
    async def _handle_rtcp_packet(self, packet: Any) -> None:
        try:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                self.nacks += 1
                self.retransmit(packet.lost)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (
                RTCP_PSFB_PLI,
                RTCP_PSFB_FIR,
            ):
                self.keyframe_requests += 1
                self.up.request_keyframe()
        except Exception:
            logger.exception("RTCP feedback handling failed")

    def use_rtx(self, payload_type: int | None, ssrc: int) -> None:
        """Answer NACKs with RTX packets of ``payload_type`` on ``ssrc`` (kept
        once chosen), or in the media stream when ``payload_type`` is None."""
        self.rtx_payload_type = payload_type
        if payload_type is not None and self.rtx_ssrc is None:
            self.rtx_ssrc = ssrc
            self._rtx_ssrc_bytes = _pack_ssrc(ssrc)
            self._rtx_seq = ssrc & 0xFFFF  # a start unrelated to the media stream's

    def sent_packet(self, seq: int) -> bytes | None:
        """The packet this subscriber was sent as ``seq`` (payload type not yet
        written), from the up track's history; None when it is gone."""
        return self.up.history(seq)

    def retransmit(self, lost: list[int]) -> None:
        target = self.target
        if target is None:
            return
        protect, sendto, addr = target
        rtx_pt = self.rtx_payload_type
        for seq in lost[:128]:
            packet = self.sent_packet(seq)
            if packet is None:
                continue
            if rtx_pt is None:
                buf = bytearray(packet)
                buf[1] = (buf[1] & 0x80) | self.payload_type
                packet = bytes(buf)
            else:
                packet = rtx.wrap(packet, rtx_pt, self._rtx_seq, self._rtx_ssrc_bytes)
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            try:
                sendto(protect(packet), addr)
            except Exception as exc:  # noqa: BLE001
                logger.debug("retransmit failed: %s", exc)
                return
            self.retransmitted += 1
            metrics.RETRANSMITTED.inc()
            if rtx_pt is not None:
                metrics.RTX_SENT.inc()


def vp8_keyframe_start(data: bytes, hlen: int) -> bool:
    """The first packet of a VP8 keyframe (RFC 7741 payload descriptor)."""
    n = len(data)
    if n <= hlen:
        return False
    b = data[hlen]
    if not (b & 0x10) or (b & 0x07):  # S bit, partition 0
        return False
    pos = hlen + 1
    if b & 0x80:  # X: extension byte
        if n <= pos:
            return False
        x = data[pos]
        pos += 1
        if x & 0x80:  # I: picture id, 7 or 15 bits
            if n <= pos:
                return False
            pos += 2 if data[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: TID/KEYIDX
            pos += 1
    return n > pos and not (data[pos] & 0x01)  # P bit 0: keyframe


def h264_keyframe_start(data: bytes, hlen: int) -> bool:
    """A packet that starts an IDR access unit: SPS, IDR, a STAP-A holding
    one, or the first fragment of an IDR slice (RFC 6184)."""
    n = len(data)
    if n <= hlen:
        return False
    nal = data[hlen] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: 2-byte sizes, then NAL units
        pos = hlen + 1
        while pos + 2 < n:
            size = (data[pos] << 8) | data[pos + 1]
            if data[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + size
        return False
    if nal == 28 and n > hlen + 1:  # FU-A: start bit and IDR type
        fu = data[hlen + 1]
        return bool(fu & 0x80) and (fu & 0x1F) == 5
    return False


def receiver_report(rtcp_ssrc: int, reports: list[Any]) -> bytes:
    return bytes(RtcpRrPacket(ssrc=rtcp_ssrc, reports=reports))


__all__ = ["DownTrack", "UpTrack", "receiver_report"]
