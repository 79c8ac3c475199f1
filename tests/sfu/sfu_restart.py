"""The client's side of an ICE restart, for aiortc test peers: aiortc's
RTCPeerConnection cannot restart ICE either, so the test client swaps its
connection with the same seam technique as the server (sfu/aiortc_seam.py)."""

from __future__ import annotations

import re

from aiortc import RTCPeerConnection
from aiortc import sdp as aiortc_sdp
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceParameters, RTCIceTransport

from sfu import aiortc_seam as seam


def dtls_of(pc: RTCPeerConnection) -> RTCDtlsTransport:
    """The (bundled) DTLS transport of a client connection."""
    return pc.getTransceivers()[0].receiver.transport


def answer_parameters(answer: str) -> tuple[RTCIceParameters, list[RTCIceCandidate]]:
    """The ICE credentials and candidates of an answer's first media section."""
    media = aiortc_sdp.SessionDescription.parse(answer).media[0]
    return media.ice, media.ice_candidates


def nominated_pair(ice: RTCIceTransport) -> tuple[tuple[str, int], tuple[str, int]]:
    """(local address, remote address) of the transport's nominated pair."""
    pair = ice._connection._nominated[1]
    return pair.local_addr, pair.remote_addr


class ClientRestart:
    """Gather a new ICE generation on ``address``, then take the server's."""

    def __init__(self, pc: RTCPeerConnection, address: str = "127.0.0.2") -> None:
        self.pc = pc
        self.ice = dtls_of(pc).transport
        self.restart = seam.IceRestart(self.ice, (address,), None)

    async def gather(self) -> tuple[RTCIceParameters, list[RTCIceCandidate]]:
        await self.restart.gather()
        return self.restart.local_parameters(), self.restart.local_candidates()

    def sdpfrag(self) -> str:
        """The WHIP/WHEP PATCH body of this restart (RFC 9725 section 4.4.1)."""
        params = self.restart.local_parameters()
        lines = [
            f"a=ice-ufrag:{params.usernameFragment}",
            f"a=ice-pwd:{params.password}",
            "m=video 9 UDP/TLS/RTP/SAVPF 0",
            "a=mid:0",
        ]
        for c in self.restart.local_candidates():
            lines.append(f"a=candidate:{c.foundation} 1 udp {c.priority} {c.ip} {c.port} typ host")
        lines.append("a=end-of-candidates")
        return "\r\n".join(lines) + "\r\n"

    def offer(self) -> str:
        """A new offer of the connection with this restart's credentials and
        candidates (what a browser sends after ``pc.restartIce()``): aiortc
        cannot write one, so the current local description is rewritten."""
        params = self.restart.local_parameters()
        candidates = "".join(
            f"a=candidate:{aiortc_sdp.candidate_to_sdp(c)}\r\n"
            for c in self.restart.local_candidates()
        )
        sdp = self.pc.localDescription.sdp
        sdp = re.sub(r"a=(candidate:.*|end-of-candidates)\r\n", "", sdp)
        sdp = re.sub(r"a=ice-ufrag:\S+", f"a=ice-ufrag:{params.usernameFragment}", sdp)
        sdp = re.sub(
            r"a=ice-pwd:\S+\r\n",
            f"a=ice-pwd:{params.password}\r\n{candidates}a=end-of-candidates\r\n",
            sdp,
        )
        return sdp.replace("a=setup:active", "a=setup:actpass")

    async def complete(self, remote: RTCIceParameters, candidates: list[RTCIceCandidate]) -> None:
        """Check against the server's new generation, then swap it in."""
        self.restart.set_remote(remote)
        for candidate in candidates:
            await self.restart.add_remote_candidate(candidate)
        await self.restart.add_remote_candidate(None)
        await self.restart.connect()
        await self.restart.install(lambda: None)
