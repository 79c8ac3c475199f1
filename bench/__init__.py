"""Load generators for airwave: clients of a running server over HTTP, WebRTC
and Socket.IO only. Nothing here imports the server's packages.

Scripts (``python -m bench.<name> --help``): ``fanout`` (one WHIP publisher,
many WHEP viewers; server CPU per forwarded packet and capacity in viewers),
``signaling`` (Socket.IO connections and chat fan-out), ``gifts`` (gift
throughput and ledger checks) and ``calls`` (1:1 calls with media).
"""
