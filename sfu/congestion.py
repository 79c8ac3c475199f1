"""Send-side bandwidth estimation from transport-wide congestion control feedback.

A subscriber whose offer carries the ``transport-wide-cc`` header extension
and ``a=rtcp-fb:* transport-cc`` (Chromium's does) gets a transport-wide
sequence number in every RTP packet we send it (:meth:`TransportCc.wrap`
stamps it just before SRTP protects the packet, whatever path sent it:
forwarding, rewriting, padding, GOP replay, retransmission), and answers with
feedback (RTPFB FMT 15, draft-holmer-rmcat-transport-wide-cc-extensions-01)
saying when each one arrived, or that it did not. From that:

* **delivery rate** over the last half second of acknowledged packets (by
  arrival time) against the **send rate** of the same packets, and what the
  link held over the last 1.5 s (the lower of the two rates there: a token
  bucket lets a burst through at line rate, a draining queue squeezes
  arrivals together);
* **queueing delay**: each packet's one-way delay (arrival minus send time,
  two clocks, so only differences count) less the lowest of the last ten
  seconds, taken as the smallest within one feedback (a standing queue, not
  a late wake-up of the receiver's thread);
* **loss**: packets the feedback reports missing.

A link is *congested* when a standing queue (``QUEUE_CONGESTED``) coincides
with packets arriving slower than they were sent (``DELIVERY_SHORTFALL``):
a bottleneck that fills, which a jitter spike or a paused receiver is not.
Then the estimate drops at once to ``BACKOFF`` times the delivery rate, the
link's measured capacity. Loss over ``HIGH_LOSS`` cuts it in proportion.
Otherwise, while no queue stands, the estimate is at least what the link
held: it rises with what we send, padding probes included, so a probe
that goes through raises it within a feedback window or two and one that
fills a queue is seen within a couple of feedback intervals (about 100 ms
in Chromium), long before a 300 ms router queue overflows. That is why the
layer choice (:mod:`sfu.bandwidth`) uses this estimator wherever the
subscriber supports it and REMB otherwise.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

EXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RTCP_RTPFB = 205
FMT_TRANSPORT_CC = 15

SENT_SIZE = 8192  # packets remembered for matching feedback (power of two)
_SENT_MASK = SENT_SIZE - 1
RATE_WINDOW = 0.5  # seconds of acknowledged packets the congestion test compares rates over
# seconds of them the estimate may rise to: a router's token bucket lets a burst through at
# line rate (tbf's 16 kB is 256 kbit/s more over half a second), so what a link holds is
# taken over a longer stretch, and never above what was sent in it
CAPACITY_WINDOW = 1.5
MIN_RATE_SPAN = 0.2  # seconds those packets must span for a rate to count
BASE_WINDOW = 10.0  # seconds over which the lowest one-way delay is the base
QUEUE_CONGESTED = 0.040  # seconds of standing queue that, with a shortfall, is congestion
QUEUE_CLEAR = 0.015  # seconds of queue under which the estimate may rise
DELIVERY_SHORTFALL = 0.92  # delivery rate under this share of the send rate: a bottleneck
BACKOFF = 0.9  # of the delivery rate, after congestion
BACKOFF_HOLD = 0.5  # seconds after a cut in which no other cut follows (the cut takes effect)
HIGH_LOSS = 0.10
LOSS_WINDOW = 1.0  # seconds of feedback the loss fraction is measured on
MAX_ESTIMATE = 50_000_000
RTP_OVERHEAD = 48  # bytes per packet below RTP: IPv4 + UDP + SRTP tag, roughly


def parse_feedback(data: bytes) -> list[tuple[int, int | None]]:
    """One transport-cc feedback packet's FCI part (after the two SSRCs) as
    (sequence number, arrival time in microseconds or None when not received),
    in sequence order. Arrival times are on the receiver's clock. Raises
    ValueError on a malformed packet."""
    if len(data) < 8:
        raise ValueError("transport-cc feedback too short")
    base = (data[0] << 8) | data[1]
    count = (data[2] << 8) | data[3]
    reference = (data[4] << 16) | (data[5] << 8) | data[6]
    if reference & 0x800000:
        reference -= 0x1000000
    statuses: list[int] = []
    pos = 8
    while len(statuses) < count:
        if pos + 2 > len(data):
            raise ValueError("transport-cc feedback: chunks cut short")
        chunk = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if not chunk & 0x8000:  # run length
            statuses.extend([(chunk >> 13) & 0x3] * (chunk & 0x1FFF))
        elif chunk & 0x4000:  # status vector, 2-bit symbols
            statuses.extend((chunk >> shift) & 0x3 for shift in range(12, -1, -2))
        else:  # status vector, 1-bit symbols
            statuses.extend((chunk >> shift) & 0x1 for shift in range(13, -1, -1))
    del statuses[count:]
    arrival = reference * 64_000
    out: list[tuple[int, int | None]] = []
    for i, symbol in enumerate(statuses):
        seq = (base + i) & 0xFFFF
        if symbol == 0:
            out.append((seq, None))
            continue
        if symbol == 1:
            if pos + 1 > len(data):
                raise ValueError("transport-cc feedback: deltas cut short")
            delta = data[pos]
            pos += 1
        elif symbol == 2:
            if pos + 2 > len(data):
                raise ValueError("transport-cc feedback: deltas cut short")
            delta = int.from_bytes(data[pos : pos + 2], "big", signed=True)
            pos += 2
        else:
            raise ValueError("transport-cc feedback: reserved status symbol")
        arrival += delta * 250
        out.append((seq, arrival))
    return out


def split_feedback(data: bytes) -> tuple[list[bytes], bytes]:
    """A compound RTCP packet split into its transport-cc feedback packets'
    FCIs and the rest (which aiortc parses; it has no transport-cc parser)."""
    feedback: list[bytes] = []
    rest = bytearray()
    pos = 0
    while pos + 4 <= len(data):
        end = pos + 4 + (((data[pos + 2] << 8) | data[pos + 3]) << 2)
        if end > len(data):
            break
        if data[pos + 1] == RTCP_RTPFB and data[pos] & 0x1F == FMT_TRANSPORT_CC:
            feedback.append(bytes(data[pos + 12 : end]))
        else:
            rest += data[pos:end]
        pos = end
    return feedback, bytes(rest)


class TransportCc:
    """The transport-wide sequence numbers of one subscriber's transport and
    the estimate its feedback gives. ``on_estimate(bitrate, congested)`` is
    called after each feedback once there is an estimate."""

    def __init__(self, ext_id: int, on_estimate: Callable[[int, bool], None]) -> None:
        self.ext_id = ext_id
        self._on_estimate = on_estimate
        self._next = 0
        self._sent_seq = [-1] * SENT_SIZE  # wrap() holds these three lists
        self._sent_at = [0.0] * SENT_SIZE
        self._sent_size = [0] * SENT_SIZE
        self.feedbacks = 0
        self.new_path()

    def new_path(self) -> None:
        """The packets go another way from now on (an ICE restart): what the old
        path delivered, delayed or lost says nothing of the new one, and the
        packets sent into the old path while it was dying are not losses of the
        new. The estimate starts over; the sequence numbers go on."""
        self._sent_seq[:] = [-1] * SENT_SIZE
        # acknowledged packets (arrival s, send s, bytes), oldest first
        self._short = _Window(RATE_WINDOW, MIN_RATE_SPAN)  # acknowledged packets: congestion
        self._long = _Window(CAPACITY_WINDOW, CAPACITY_WINDOW * 2 / 3)  # what the link holds
        self._base: deque[tuple[float, float]] = deque()  # (second, lowest delay in it)
        self._base_min = 0.0  # the lowest of them
        self._losses: deque[tuple[float, int, int]] = deque()  # (at, lost, reported)
        self.estimate: int | None = None
        self.congested = False
        self.queue_delay = 0.0  # seconds, from the last feedback
        self.delivery_bps = 0
        self.loss = 0.0
        self._cut_at = 0.0

    # -- sending --------------------------------------------------------------------------

    def wrap(self, protect: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        """``protect`` (SRTP) preceded by writing our next transport-wide
        sequence number into the packet's one-byte header extension block."""
        sent_seq, sent_at, sent_size = self._sent_seq, self._sent_at, self._sent_size
        element = (self.ext_id << 4) | 1
        clock = time.monotonic

        def stamped(packet: bytes) -> bytes:
            seq = self._next
            self._next = (seq + 1) & 0xFFFF
            i = seq & _SENT_MASK
            sent_seq[i] = seq
            sent_at[i] = clock()
            b0 = packet[0]
            head = 12 + ((b0 & 0x0F) << 2)
            ours = bytes((element, seq >> 8, seq & 0xFF, 0))
            if b0 & 0x10 and packet[head] == 0xBE and packet[head + 1] == 0xDE:
                words = ((packet[head + 2] << 8) | packet[head + 3]) + 1
                out = (
                    packet[:head] + bytes((0xBE, 0xDE, words >> 8, words & 0xFF)) + ours
                    + packet[head + 4 :]
                )
            elif b0 & 0x10:  # another extension profile: leave it be, unstamped
                sent_seq[i] = -1
                return protect(packet)
            else:
                out = bytes((b0 | 0x10,)) + packet[1:head] + b"\xbe\xde\x00\x01" + ours + packet[head:]
            sent_size[i] = len(out) + RTP_OVERHEAD
            return protect(out)

        return stamped

    # -- feedback -------------------------------------------------------------------------

    def on_feedback(self, fci: bytes, now: float | None = None) -> None:
        """One transport-cc feedback packet's FCI (after the two SSRCs)."""
        if now is None:
            now = time.monotonic()
        try:
            statuses = parse_feedback(fci)
        except ValueError:
            return
        self.feedbacks += 1
        lost = received = 0
        queue_min: float | None = None
        acked = False
        for seq, arrival_us in statuses:
            i = seq & _SENT_MASK
            if self._sent_seq[i] != seq:
                continue
            if arrival_us is None:
                lost += 1
                continue
            received += 1
            sent = self._sent_at[i]
            arrival = arrival_us / 1e6
            delay = self._note_delay(arrival - sent, now)
            queue_min = delay if queue_min is None else min(queue_min, delay)
            size = self._sent_size[i]
            self._short.add(arrival, sent, size)
            self._long.add(arrival, sent, size)
            acked = True
            self._sent_seq[i] = -1  # counted once, whatever later feedback repeats
        if not lost and not received:
            return
        self._losses.append((now, lost, lost + received))
        while self._losses and now - self._losses[0][0] > LOSS_WINDOW:
            self._losses.popleft()
        reported = sum(n for _, _, n in self._losses)
        self.loss = sum(n for _, n, _ in self._losses) / reported if reported else 0.0
        if not acked:
            return
        if queue_min is not None:
            self.queue_delay = queue_min
        self._update(now)

    def _note_delay(self, delay: float, now: float) -> float:
        """Record a one-way delay; return it less the base (the lowest of BASE_WINDOW)."""
        base = self._base
        second = int(now)
        if base and base[-1][0] == second:
            if delay < base[-1][1]:
                base[-1] = (second, delay)
                self._base_min = min(self._base_min, delay)
        else:
            base.append((second, delay))
            while second - base[0][0] > BASE_WINDOW:
                base.popleft()
            self._base_min = min(d for _, d in base)  # once a second
        return delay - self._base_min

    def _update(self, now: float) -> None:
        rates = self._short.rates()
        if rates is None:
            return
        delivery, send = rates
        self.delivery_bps = int(delivery)
        held = self._long.rates()
        # what the link carried without a queue: not more than was sent (arrivals squeezed
        # together by a draining queue or a token bucket are not capacity), and nothing
        # until a full second of it (the first frames come through the bucket at line rate)
        capacity = int(min(held)) if held is not None else None
        estimate = self.estimate
        self.congested = False
        if self.queue_delay > QUEUE_CONGESTED and delivery < DELIVERY_SHORTFALL * send:
            self.congested = True
            if now - self._cut_at >= BACKOFF_HOLD:
                self._cut_at = now
                estimate = int(BACKOFF * delivery)
        elif self.loss > HIGH_LOSS:
            if now - self._cut_at >= BACKOFF_HOLD:
                self._cut_at = now
                estimate = int(min(estimate or delivery, delivery) * (1 - 0.5 * self.loss))
                self.congested = True
        elif capacity is not None and self.queue_delay < QUEUE_CLEAR and now - self._cut_at >= BACKOFF_HOLD:
            estimate = max(estimate or 0, capacity)
        elif estimate is None and capacity is not None:
            estimate = capacity
        estimate = min(estimate, MAX_ESTIMATE) if estimate is not None else None
        self.estimate = estimate
        if estimate is not None:
            self._on_estimate(estimate, self.congested)


class _Window:
    """Acknowledged packets (arrival s, send s, bytes) of the last ``seconds`` of
    arrivals, with their byte count kept as they come and go."""

    __slots__ = ("seconds", "min_span", "_packets", "_bytes")

    def __init__(self, seconds: float, min_span: float) -> None:
        self.seconds = seconds
        self.min_span = min_span
        self._packets: deque[tuple[float, float, int]] = deque()
        self._bytes = 0

    def add(self, arrival: float, sent: float, size: int) -> None:
        packets = self._packets
        packets.append((arrival, sent, size))
        self._bytes += size
        while arrival - packets[0][0] > self.seconds:
            self._bytes -= packets.popleft()[2]

    def rates(self) -> tuple[float, float] | None:
        """(delivery, send) rate in bits/s, or None over too short a stretch."""
        packets = self._packets
        if len(packets) < 4:
            return None
        arrival_span = packets[-1][0] - packets[0][0]
        send_span = packets[-1][1] - packets[0][1]  # in arrival order: about send order
        if arrival_span < self.min_span or send_span <= 0:
            return None
        # bytes after the first packet: the spans start with it
        bits = 8 * (self._bytes - packets[0][2])
        return bits / arrival_span, bits / send_span


__all__ = [
    "EXT_TRANSPORT_CC",
    "FMT_TRANSPORT_CC",
    "TransportCc",
    "parse_feedback",
    "split_feedback",
]
