"""The per-viewer layer choice, as numbers: quick downgrades, hysteresis,
probes, pauses, caps (sfu/bandwidth.py)."""

from __future__ import annotations

from sfu.bandwidth import (
    DOWNGRADE_AFTER,
    HEADROOM,
    LINK_CHANGED,
    RATE_PEAK_WINDOW,
    UPGRADE_AFTER,
    DownlinkEstimate,
    LayerPolicy,
)

RATES = [150_000.0, 500_000.0, 1_500_000.0]


def run(policy: LayerPolicy, current: int, budget: int | None, seconds: float, *, loss=0.0,
        start=0.0, max_layer=None, rates=RATES):
    """Decide every 0.5 s for ``seconds``; returns the layers chosen and the last decision."""
    t = start
    chosen = []
    decision = None
    while t <= start + seconds:
        decision = policy.decide(current, rates, budget, loss, t, max_layer=max_layer)
        current = decision.layer
        chosen.append(current)
        t += 0.5
    return chosen, decision


def test_no_estimate_means_the_top_layer_that_flows():
    policy = LayerPolicy()
    assert policy.decide(0, RATES, None, 0.0, 0.0).layer == 2
    assert policy.decide(0, [150_000.0, 500_000.0, 0.0], None, 0.0, 0.0).layer == 1
    assert policy.decide(2, RATES, None, 0.0, 0.0, max_layer=0).layer == 0


def test_downgrade_after_a_second_under_the_current_layer():
    policy = LayerPolicy()
    chosen, _ = run(policy, 2, 600_000, 3.0)
    assert chosen[0] == 2  # not at once: one low REMB is not a trend
    first = chosen.index(1)
    assert first * 0.5 >= DOWNGRADE_AFTER and first * 0.5 <= DOWNGRADE_AFTER + 0.5
    assert set(chosen[first:]) == {1}


def test_no_downgrade_while_the_estimate_rises():
    # the publisher ramps its layer up faster than the receiver's REMB follows
    policy = LayerPolicy()
    t, budget = 0.0, 1_300_000
    while t < 6.0:
        assert policy.decide(2, RATES, budget, 0.0, t).layer == 2
        t += 0.5
        budget += 15_000  # +1.1 % or more a step, still under the layer
    # the estimate stops rising under the layer: down after DOWNGRADE_AFTER
    chosen, _ = run(policy, 2, budget, 3.0, start=t)
    assert chosen[-1] == 1


def test_high_loss_steps_down_at_once():
    policy = LayerPolicy()
    assert policy.decide(2, RATES, 5_000_000, 0.2, 0.0).layer == 1


def test_no_oscillation_in_the_hysteresis_band():
    # the estimate fits layer 1 but not with headroom: it neither leaves nor climbs
    policy = LayerPolicy()
    chosen, _ = run(policy, 2, int(RATES[2] * 1.05), 20.0)
    assert set(chosen) == {2}
    chosen, _ = run(policy, 1, int(RATES[2] * 1.05), 20.0, start=30.0)
    assert set(chosen) == {1}


def test_upgrade_only_after_the_estimate_showed_room_for_a_while():
    policy = LayerPolicy()
    chosen, _ = run(policy, 0, 3_000_000, 12.0)
    assert chosen[0] == 0
    up = next(i for i, layer in enumerate(chosen) if layer > 0)
    assert up * 0.5 >= UPGRADE_AFTER
    assert chosen[up] == 2  # straight to the highest layer that fits with headroom
    chosen, _ = run(LayerPolicy(), 0, 700_000, 12.0)
    assert set(chosen) == {0, 1}  # room for the middle one only


def test_pause_below_the_lowest_layer_and_resume():
    policy = LayerPolicy()
    chosen, _ = run(policy, 0, 50_000, 3.0)
    assert chosen[-1] == -1
    chosen, _ = run(policy, -1, 400_000, 6.0, start=10.0)
    assert chosen[0] == -1 and chosen[-1] == 0


def test_probe_toward_the_next_layer_then_back_off():
    policy = LayerPolicy()
    # layer 1 fits, layer 2 does not: pad toward layer 2 for a while
    d = policy.decide(1, RATES, 800_000, 0.0, 0.0)
    assert d.layer == 1 and d.probe_bps >= RATES[2] / HEADROOM - RATES[1] - 1
    _, d = run(policy, 1, 800_000, 2.0, start=0.5)
    assert d.probe_bps > 0
    # the estimate did not grow: a pause
    _, d = run(policy, 1, 800_000, 5.0, start=4.0)
    assert d.probe_bps == 0
    # while a probe makes the estimate grow, probing goes on
    policy = LayerPolicy()
    t, budget = 0.0, 800_000
    while t < 12.0:
        d = policy.decide(1, RATES, budget, 0.0, t)
        assert d.layer == 1 and d.probe_bps > 0
        t += 0.5
        budget = min(int(budget * 1.03), int(RATES[2] * 1.1))
    # on the top layer there is nothing to probe for
    assert policy.decide(2, RATES, 5_000_000, 0.0, 100.0).probe_bps == 0


def test_a_link_that_opens_up_is_probed_without_waiting_out_the_gap():
    policy = LayerPolicy()
    _, d = run(policy, 1, 800_000, 4.0)  # one probe that did not raise the estimate
    assert d.probe_bps == 0
    # still inside the back-off gap, the estimate climbs on its own (a limit lifted): probe now
    d = policy.decide(1, RATES, int(800_000 * LINK_CHANGED) + 1, 0.0, 4.5)
    assert d.layer == 1 and d.probe_bps > 0
    # a small wobble of the estimate would not have
    policy = LayerPolicy()
    run(policy, 1, 800_000, 4.0)
    assert policy.decide(1, RATES, 880_000, 0.0, 4.5).probe_bps == 0


def test_estimate_expires():
    est = DownlinkEstimate()
    assert est.current(0.0) is None
    est.update(700_000, 10.0)
    assert est.current(11.0) == 700_000
    assert est.current(20.0) is None


def test_a_dip_in_a_layers_rate_does_not_let_a_viewer_onto_it():
    policy = LayerPolicy()
    budget = 1_000_000  # holds layer 2 at its dip (700k) but not at its usual 1.5M
    dipped = [RATES[0], RATES[1], 700_000.0]
    policy.decide(1, RATES, budget, 0.0, 0.0)
    chosen, _ = run(policy, 1, budget, RATE_PEAK_WINDOW - 1.0, start=0.5, rates=dipped)
    assert set(chosen) == {1}


# -- the send-side estimate (transport-cc) ---------------------------------------------


def test_send_side_steps_down_at_once_on_congestion_and_not_without():
    from sfu.bandwidth import LayerPolicy as Policy

    policy = Policy(send_side=True)
    # under the layer but no queue: our estimate lags what is delivered, nothing moves
    assert policy.decide(2, RATES, 1_200_000, 0.0, 0.0).layer == 2
    assert policy.decide(2, RATES, 1_200_000, 0.0, 5.0).layer == 2
    # a queue builds: down at once to what fits in HEADROOM of the estimate
    assert policy.decide(2, RATES, 700_000, 0.0, 5.1, congested=True).layer == 1
    # not even the lowest fits: paused at once
    assert policy.decide(1, RATES, 100_000, 0.0, 5.2, congested=True).layer == -1


def test_send_side_probe_climbs_by_the_estimate_and_stops_on_congestion():
    from sfu.bandwidth import SEND_SIDE_PROBE_GAP, SEND_SIDE_UPGRADE_AFTER
    from sfu.bandwidth import LayerPolicy as Policy

    policy = Policy(send_side=True)
    d = policy.decide(1, RATES, 600_000, 0.0, 0.0)
    assert d.layer == 1
    # padding of at most the estimate again (not the whole way to the top layer at once)
    assert 0 < d.probe_bps <= 600_000
    # the probe meets a queue: it stops now, and the next waits out the gap
    d = policy.decide(1, RATES, 540_000, 0.0, 0.3, congested=True)
    assert d.layer == 1 and d.probe_bps == 0
    assert policy.decide(1, RATES, 540_000, 0.0, 0.3 + SEND_SIDE_PROBE_GAP - 0.1).probe_bps == 0
    d = policy.decide(1, RATES, 540_000, 0.0, 0.3 + SEND_SIDE_PROBE_GAP + 0.1)
    assert d.probe_bps > 0
    # the link has room now: the delivered estimate climbs with the probe, and the
    # layer follows once it has fit for SEND_SIDE_UPGRADE_AFTER
    t, budget, layer = 3.0, 1_100_000, 1
    while t < 10.0 and layer == 1:
        d = policy.decide(layer, RATES, budget, 0.0, t)
        layer = d.layer
        budget = min(3_000_000, 500_000 + d.probe_bps) if d.probe_bps else budget
        t += 0.25
    assert layer == 2, (t, budget)
    needed = RATES[2] / HEADROOM
    assert budget >= needed and t - 3.0 <= 2.5 + SEND_SIDE_UPGRADE_AFTER


def test_a_layer_that_starts_while_watched_is_taken_only_once_it_has_settled():
    """The publisher's encoder starts its top layer at a fraction of its rate and ramps
    it up: taken at once, it outgrows the viewer's link a few seconds later (a step down
    and a freeze). A layer already flowing when the viewer came is judged at once."""
    budget = 1_000_000  # holds layer 2 while it starts at 400k, not at its 1.5M
    ramping = [RATES[0], RATES[1], 0.0]
    for send_side in (False, True):
        policy = LayerPolicy(send_side=send_side)
        run(policy, 1, budget, 2.0, rates=ramping)  # the top layer not yet sent
        started = [RATES[0], RATES[1], 400_000.0]
        chosen, _ = run(policy, 1, budget, RATE_PEAK_WINDOW - 1.0, start=2.5, rates=started)
        assert set(chosen) == {1}, (send_side, chosen)
        # still at its first rate once it has run the window: now it is judged by it
        chosen, _ = run(policy, 1, budget, 4.0, start=2.5 + RATE_PEAK_WINDOW, rates=started)
        assert chosen[-1] == 2, (send_side, chosen)
    # a viewer that arrives with the layer already flowing takes it as soon as it fits
    chosen, _ = run(LayerPolicy(), 1, budget, UPGRADE_AFTER + 1.0, rates=[RATES[0], RATES[1], 400_000.0])
    assert chosen[-1] == 2


def test_a_paused_viewer_on_an_audio_only_estimate_probes_its_way_back():
    """A viewer's first send-side estimate can come from its audio alone (its video
    waits for a keyframe of a layer that does not flow): paused, with an estimate of a
    few kbit/s. Padding of the estimate only delivers the estimate again; the probe
    must go past it (CI once showed a viewer without a picture for 20 s)."""
    from sfu.bandwidth import PAUSED_PROBE_MIN
    from sfu.bandwidth import LayerPolicy as Policy

    rates = [120_000.0, 400_000.0, 0.0]
    policy = Policy(send_side=True)
    # waiting on the top layer, which does not flow; nothing fits the estimate: paused
    d = policy.decide(2, rates, 4_000, 0.0, 0.0)
    assert d.layer == -1
    # the link holds all of it: the estimate follows what the padding delivers
    t, budget, layer = 0.25, 4_000, -1
    while t < 10.0 and layer == -1:
        d = policy.decide(layer, rates, budget, 0.0, t)
        layer = d.layer
        assert d.probe_bps >= min(PAUSED_PROBE_MIN, rates[0]) or layer >= 0
        budget = max(budget, d.probe_bps)
        t += 0.25
    assert layer == 0, (t, budget)
    # on a link that holds less than the lowest layer, the probe meets a queue and stops
    policy = Policy(send_side=True)
    policy.decide(2, rates, 4_000, 0.0, 0.0)
    d = policy.decide(-1, rates, 4_000, 0.0, 0.25)
    assert d.probe_bps > 0
    d = policy.decide(-1, rates, 60_000, 0.0, 0.5, congested=True)
    assert d.layer == -1 and d.probe_bps == 0


def test_a_paused_viewer_takes_a_layer_that_just_began():
    """Settling (a layer that began while watched waits RATE_PEAK_WINDOW) is for a
    viewer with a picture to keep; a paused one takes the lowest layer once it fits."""
    for send_side in (False, True):
        policy = LayerPolicy(send_side=send_side)
        run(policy, -1, 50_000, 1.0, rates=RATES)  # paused, every layer flowing
        run(policy, -1, 50_000, 1.0, start=1.5, rates=[0.0, RATES[1], RATES[2]])  # layer 0 stops
        # layer 0 begins again and fits (layer 1 does not): taken well inside RATE_PEAK_WINDOW
        chosen, _ = run(policy, -1, 400_000, UPGRADE_AFTER + 1.0, start=3.0)
        assert UPGRADE_AFTER + 1.0 < RATE_PEAK_WINDOW
        assert chosen[-1] == 0, (send_side, chosen)
