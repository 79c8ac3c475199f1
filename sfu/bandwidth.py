"""Per-subscriber downlink estimate and the layer choice that follows it.

Where the subscriber gives transport-cc feedback (Chromium does), we estimate
its downlink ourselves (:mod:`sfu.congestion`): that estimate follows what
was delivered and says at once when a queue builds. Otherwise its browser
estimates: we negotiate ``goog-remb`` and ``abs-send-time`` on its leg and
write abs-send-time into every packet we send it, so it runs its
receive-side estimator and sends REMB. :class:`DownlinkEstimate` keeps the
latest estimate of either kind.
:class:`LayerPolicy` turns that estimate and the publisher's measured layer
bitrates into one layer per subscriber track: down when the estimate stays
under the current layer for a second or at once when loss passes 10 %, up
only after the estimate showed headroom for two seconds, probing with padding
when the estimate sits under the next layer (REMB only grows with traffic).
Nothing here knows tracks or sessions: numbers in, a decision out.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADROOM = 0.85  # share of the estimate a layer may use
DOWNGRADE_AFTER = 1.0  # seconds the estimate stays under the current layer
UPGRADE_AFTER = 2.0  # seconds the estimate shows room for a higher layer
HIGH_LOSS = 0.10  # fraction lost (receiver reports) that forces a step down
PROBE_SECONDS = 3.0  # one padding probe toward the next layer (again at once while it works)
PROBE_GAP = 4.0  # seconds between two probes (doubled after a failed one, up to MAX)
MAX_PROBE_GAP = 8.0  # a lifted limit is found within about this (issue 16: top layer in 15 s)
LINK_CHANGED = 1.25  # the estimate beyond this many times its peak in a failed probe: probe now
MAX_PROBE_BPS = 3_000_000
# with a send-side estimate (transport-cc): a probe that fills a queue is seen
# within about 100 ms and stopped, so probes may come often and climb fast
SEND_SIDE_UPGRADE_AFTER = 1.0
SEND_SIDE_PROBE_GAP = 2.0
SEND_SIDE_MAX_PROBE_GAP = 4.0
PROBE_STEP = 1.0  # a send-side probe adds at most this share of the estimate
PROBE_MARGIN = 1.1  # a probe aims this much past what the next layer needs
PAUSED_PROBE_MIN = 64_000  # bits/s a paused viewer's probe goes at least past its estimate
RATE_PEAK_WINDOW = 5.0  # a layer is taken only if its highest rate of this many seconds fits
ESTIMATE_TIMEOUT = 5.0  # seconds after which a REMB no longer counts


class DownlinkEstimate:
    """One subscriber's downlink: our send-side estimate (transport-cc) or what
    its browser says (REMB); the loss and round-trip time of its receiver
    reports are kept per track (DownTrack)."""

    __slots__ = ("bitrate", "updated")

    def __init__(self) -> None:
        self.bitrate: int | None = None  # bits per second, the latest estimate
        self.updated = 0.0

    def update(self, bitrate: int, now: float) -> None:
        self.bitrate = bitrate
        self.updated = now

    def current(self, now: float) -> int | None:
        """The estimate, or None when there is no (recent) one."""
        if self.bitrate is None or now - self.updated > ESTIMATE_TIMEOUT:
            return None
        return self.bitrate


@dataclass
class Decision:
    layer: int  # -1: paused
    probe_bps: int = 0  # padding to send on top of the layer, bits per second


class LayerPolicy:
    """One subscriber track's layer choice over time (hysteresis and probing)."""

    def __init__(self, *, send_side: bool = False) -> None:
        # the estimate is ours, from transport-cc feedback (it does not grow past
        # what is delivered, and comes with a congestion signal), not a REMB
        self.send_side = send_side
        self._below_since: float | None = None
        self._above_since: float | None = None
        self._probe_until = 0.0
        self._next_probe = 0.0
        self._probe_gap = SEND_SIDE_PROBE_GAP if send_side else PROBE_GAP
        self._probe_start_estimate = 0
        self._probe_peak = 0  # the highest estimate during the last probe
        self._last_budget: int | None = None
        self._rate_history: list[tuple[float, list[float]]] = []
        # when each layer began to flow, as this viewer saw it (None: already flowing at
        # the viewer's first decision)
        self._flowing_since: dict[int, float | None] = {}

    def decide(
        self,
        current: int,
        rates: list[float],
        budget: int | None,
        loss: float,
        now: float,
        *,
        max_layer: int | None = None,
        congested: bool = False,
    ) -> Decision:
        """``current``: the layer sent now (-1 paused); ``rates``: each layer's
        bitrate (bits/s, low to high; 0 for a layer the publisher is not
        sending); ``budget``: what the video may use (None: no estimate, so
        no limit). A layer is kept while it fits the estimate and taken only
        when it fits with HEADROOM: the band between is the hysteresis.
        ``congested``: a send-side estimate saw a queue build just now (a probe
        stops at once, a layer that does not fit is left at once)."""
        top = len(rates) - 1
        if max_layer is not None:
            top = max(0, min(top, max_layer))
        active = [i for i in range(top + 1) if rates[i] > 0]
        if not active:
            return Decision(current if current <= top else top)
        if budget is None:
            self._below_since = self._above_since = self._last_budget = None
            return Decision(active[-1])
        # layers' rates swing with the picture: judge a layer by its recent peak, or a
        # dip lets a viewer onto a layer its link cannot hold
        self._rate_history = [(t, r) for t, r in self._rate_history if now - t < RATE_PEAK_WINDOW]
        self._rate_history.append((now, list(rates)))
        peaks = [max(r[i] for _, r in self._rate_history if len(r) > i) for i in range(len(rates))]
        first = not self._flowing_since and len(self._rate_history) == 1
        for i, rate in enumerate(rates):
            if rate <= 0:
                self._flowing_since.pop(i, None)
            elif i not in self._flowing_since:
                self._flowing_since[i] = None if first else now
        fits = -1
        for i in active:
            # a layer that began to flow while this viewer watched is still climbing
            # (an encoder ramps a new layer up from little): above the current one it is
            # taken only once its peak covers RATE_PEAK_WINDOW. A paused viewer has no
            # picture to keep: any layer that fits is better than none (a layer that
            # flickers off and on would otherwise keep it paused)
            since = self._flowing_since.get(i)
            settling = (0 <= current < i and since is not None
                        and now - since < RATE_PEAK_WINDOW)
            if peaks[i] <= budget * HEADROOM and not settling:
                fits = i
        # a receiver that is not congested reports about what it receives and
        # grows from there: while the estimate rises, a layer above it (the
        # publisher ramping up) is no reason to step down
        rising = self._last_budget is not None and budget > self._last_budget * 1.01
        self._last_budget = budget
        if current > top or (current >= 0 and rates[current] <= 0):
            return Decision(max(fits, active[0]) if current > top else fits)
        if self.send_side:
            return self._decide_send_side(current, rates, peaks, active, fits, budget, loss,
                                          now, congested)
        if loss > HIGH_LOSS and current >= 0:
            self._above_since = None
            lower = [i for i in active if i < current]
            return Decision(min(fits, lower[-1] if lower else -1))
        if current >= 0 and rates[current] > budget:
            self._above_since = None
            if self._below_since is None or rising:
                self._below_since = now
            if now - self._below_since >= DOWNGRADE_AFTER:
                self._below_since = None
                return Decision(fits)
            return Decision(current)
        self._below_since = None
        if fits > current:
            if self._above_since is None:
                self._above_since = now
            if now - self._above_since >= UPGRADE_AFTER:
                self._above_since = None
                self._probe_gap = PROBE_GAP
                return Decision(fits)
            return Decision(current)
        self._above_since = None
        higher = [i for i in active if i > current]
        if not higher:
            return Decision(current)
        return Decision(current, self._probe(current, peaks, higher[0], budget, now))

    def _decide_send_side(
        self,
        current: int,
        rates: list[float],
        peaks: list[float],
        active: list[int],
        fits: int,
        budget: int,
        loss: float,
        now: float,
        congested: bool,
    ) -> Decision:
        """The choice on our own estimate: down only on congestion or loss (the
        estimate lags a layer that is still being delivered), up once the
        next layer has fit for SEND_SIDE_UPGRADE_AFTER, probes that climb in
        steps of the estimate and stop at the first sign of a queue."""
        if congested or (loss > HIGH_LOSS and current >= 0):
            self._above_since = None
            self._end_probe(now)
            if current >= 0 and rates[current] > budget:
                lower = [i for i in active if i < current]
                return Decision(min(fits, lower[-1]) if lower else -1)
            return Decision(current)
        if current >= 0 and rates[current] > budget:
            return Decision(current)
        if fits > current:
            if self._above_since is None:
                self._above_since = now
            if now - self._above_since >= SEND_SIDE_UPGRADE_AFTER:
                self._above_since = None
                self._probe_gap = SEND_SIDE_PROBE_GAP
                self._probe_until = 0.0
                return Decision(fits)
            return Decision(current, self._probe_rate(current, peaks, fits, budget))
        self._above_since = None
        higher = [i for i in active if i > current]
        if not higher:
            self._probe_until = 0.0
            return Decision(current)
        if now >= self._probe_until:
            if self._probe_until:  # a probe ran its time without an upgrade: go on if it grew
                grew = budget > self._probe_start_estimate * 1.05
                self._probe_until = 0.0
                if not grew:
                    self._end_probe(now)
            if now < self._next_probe:
                return Decision(current)
            self._probe_until = now + PROBE_SECONDS
            self._probe_start_estimate = budget
        return Decision(current, self._probe_rate(current, peaks, higher[0], budget))

    def _probe_rate(self, current: int, peaks: list[float], nxt: int, budget: int) -> int:
        """Padding that takes the delivery toward what layer ``nxt`` needs, at
        most PROBE_STEP of the estimate more than the current layer. Paused, the
        padding is all the video there is and the estimate is what it delivered:
        padding of the estimate would only hold it where it is (an estimate
        taken on audio alone kept a new viewer paused), so it goes past it."""
        target = peaks[nxt] / HEADROOM * PROBE_MARGIN
        if current >= 0:
            rate = min(target - peaks[current], budget * PROBE_STEP)
        else:
            rate = min(target, budget + max(budget * PROBE_STEP, PAUSED_PROBE_MIN))
        return int(max(0.0, min(rate, MAX_PROBE_BPS)))

    def _end_probe(self, now: float) -> None:
        """A probe that failed (a queue built, or the estimate did not grow): wait
        before the next, longer after each failure."""
        if self._probe_until:
            self._probe_until = 0.0
            self._next_probe = now + self._probe_gap
            self._probe_gap = min(SEND_SIDE_MAX_PROBE_GAP, self._probe_gap * 2)

    def _probe(self, current: int, rates: list[float], nxt: int, budget: int, now: float) -> int:
        """Padding toward the next layer when the estimate sits under it."""
        target = rates[nxt] / HEADROOM
        base = rates[current] if current >= 0 else 0.0
        rate = int(min(MAX_PROBE_BPS, max(0.0, target - base)))
        if now < self._probe_until:
            self._probe_peak = max(self._probe_peak, budget)
            return rate
        if self._probe_until:  # a probe ended without an upgrade
            self._probe_until = 0.0
            if budget > self._probe_start_estimate * 1.05:  # but the estimate grew: go on
                self._probe_gap = PROBE_GAP
                self._probe_until = now + PROBE_SECONDS
                self._probe_start_estimate = budget
                return rate
            self._probe_gap = min(MAX_PROBE_GAP, self._probe_gap * 2)
            self._next_probe = now + self._probe_gap
            return 0
        if now < self._next_probe:
            # the estimate grew well past the most it reached during the last, failed
            # probe, without a probe: the link changed (a limit lifted); no waiting out the gap
            if budget < self._probe_peak * LINK_CHANGED:
                return 0
            self._probe_gap = PROBE_GAP
        self._probe_until = now + PROBE_SECONDS
        self._probe_start_estimate = budget
        self._probe_peak = budget
        return rate


__all__ = ["Decision", "DownlinkEstimate", "LayerPolicy"]
