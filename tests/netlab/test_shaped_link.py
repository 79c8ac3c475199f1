"""Today's airwave through a shaped link (issue 16's "before"): a Chromium publisher (fake
camera 1280x720, one layer) over WHIP, one Chromium viewer behind 600 kbit/s (tbf, 300 ms
queue) and one unshaped viewer over WHEP, 40 s. Asserted: what today's server guarantees
(media reaches both viewers, the shaped one through its shaped link). Measured and recorded
(test-artifacts/netlab/): frame rate, freeze time, loss, lines and kbit/s over the window after
the first 10 s. The long variants and the no-server reference are `python -m bench.shaped`."""

from __future__ import annotations

import pytest

from bench.netlab import Netlab, Shape
from bench.shaped import row, through_server

from .conftest import record

pytestmark = pytest.mark.netlab


@pytest.mark.timeout(240)
async def test_a_shaped_and_an_unshaped_viewer_both_get_the_stream(lab: Netlab) -> None:
    result = await through_server(lab, shape=Shape(600, queue_ms=300), duration=40, skip_s=10,
                                  simulcast=False)
    record("shaped_single_layer", {"row": row("server", result), **result})

    for viewer in ("shaped", "free"):
        inbound = result[viewer]["inbound"]
        assert inbound["framesDecodedTotal"] > 0, viewer
        assert inbound["packetsReceived"] > 0, f"{viewer} got no video in the measured window"
    shaped_path = result["shaped"]["pair"]["paths"]
    assert all(path.startswith(f"{lab.peers['shaped'].address}:") for path in shaped_path)
    assert result["link"]["bytes"] > 0, "nothing crossed the shaped link's tbf"
