"""A track's RTP timestamps onto the file's timeline: across the 32-bit wrap,
across a jump the arrival times do not show (a new source), always forward."""

from __future__ import annotations

from recording.recorder import TrackTimeline

RATE = 90000


def test_timestamps_advance_across_the_wrap() -> None:
    timeline = TrackTimeline(RATE)
    start = (1 << 32) - 2 * 3000
    got = [timeline.pts((start + n * 3000) & 0xFFFFFFFF, n / 30, 1000.0, 1000.0) for n in range(5)]
    assert got == [0, 3000, 6000, 9000, 12000]


def test_a_jump_in_rtp_time_is_placed_at_its_arrival_time() -> None:
    timeline = TrackTimeline(RATE)
    assert timeline.pts(5000, 0.0, 1000.5, 1000.0) == RATE // 2  # placed by its wall clock
    assert timeline.pts(8000, 1 / 30, None, 1000.0) == RATE // 2 + 3000
    # a new source: RTP jumps by hours, the packets came 1 s later
    jumped = timeline.pts(123_456_789, 1 / 30 + 1.0, None, 1000.0)
    assert jumped == RATE // 2 + 3000 + RATE
    assert timeline.pts(123_456_789 + 3000, 1 / 30 + 1.0 + 1 / 30, None, 1000.0) == jumped + 3000


def test_timestamps_never_go_back() -> None:
    timeline = TrackTimeline(RATE)
    first = timeline.pts(90000, 0.0, 1001.0, 1000.0)
    timeline.reset()  # the publisher came back; its clock maps it before the last frame
    again = timeline.pts(10, 0.5, 1000.2, 1000.0)
    assert again == first + 1
    assert timeline.pts(10, 0.6, None, 1000.0) == again + 1  # the same timestamp again
