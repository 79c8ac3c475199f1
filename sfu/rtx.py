"""RTX retransmission packets (RFC 4588 §4), as bytes.

An RTX packet carries a lost packet again in a stream of its own: the RTX
payload type and SSRC, the RTX stream's own sequence numbers, the original
timestamp, marker, CSRCs and header extensions, and as payload the original
sequence number (OSN, 2 bytes) followed by the original payload. Padding, when
present, stays at the end of the packet.
"""

from __future__ import annotations

import struct

_pack_seq = struct.Struct("!H").pack


def header_length(packet: bytes) -> int:
    """Length of the RTP header with CSRCs and header extensions; 0 when the
    packet is too short for the header it announces."""
    n = len(packet)
    if n < 12:
        return 0
    b0 = packet[0]
    hlen = 12 + ((b0 & 0x0F) << 2)
    if b0 & 0x10:
        if n < hlen + 4:
            return 0
        hlen += 4 + (((packet[hlen + 2] << 8) | packet[hlen + 3]) << 2)
    return hlen if n >= hlen else 0


def wrap(packet: bytes, payload_type: int, sequence_number: int, ssrc: bytes) -> bytes:
    """The RTX packet resending ``packet`` (an RTP packet as sent) with the RTX
    ``payload_type``, RTX ``sequence_number`` and RTX ``ssrc`` (4 bytes)."""
    hlen = header_length(packet)
    out = bytearray(packet[:hlen])
    out[1] = (packet[1] & 0x80) | payload_type
    out[2:4] = _pack_seq(sequence_number)
    out[8:12] = ssrc
    out += packet[2:4]  # OSN
    out += packet[hlen:]
    return bytes(out)


def unwrap(packet: bytes, payload_type: int, ssrc: int) -> bytes | None:
    """The original packet inside an RTX packet, with the media
    ``payload_type`` and ``ssrc`` restored; None for a packet that carries no
    original packet (padding only, or too short)."""
    hlen = header_length(packet)
    if not hlen:
        return None
    end = len(packet)
    if packet[0] & 0x20:  # padding: its length is the last byte
        end -= packet[-1]
    if end - hlen < 2:
        return None
    out = bytearray(packet[:hlen])
    out[1] = (packet[1] & 0x80) | payload_type
    out[2:4] = packet[hlen : hlen + 2]
    out[8:12] = ssrc.to_bytes(4, "big")
    out += packet[hlen + 2 :]
    return bytes(out)


__all__ = ["header_length", "unwrap", "wrap"]
