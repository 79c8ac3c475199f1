"""A call between a user on node A and a user on node B: the call's media lives
on one node (the first party's to negotiate) and the other party's offer,
answer and candidates are forwarded there by its own node."""

from __future__ import annotations

import aiohttp

from tests.calls.call_clients import Parties, answered
from tests.calls.call_media import CallPeer
from tests.cluster.nodes import Cluster, Node
from tests.cluster.test_media_edges import metric
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import wait_for


class NodeApp:
    """What tests/calls' Party needs of an app: a URL and tokens."""

    def __init__(self, cluster: Cluster, node: Node) -> None:
        self.url = node.url
        self._cluster = cluster

    def token(self, user: str, **grants: object) -> str:
        return self._cluster.token(user, **grants)


async def test_call_between_nodes_carries_media_both_ways() -> None:
    async with Cluster(2, ring_timeout=5, call_duration=30) as cluster, aiohttp.ClientSession() as http:
        a, b = cluster.nodes
        on_a, on_b = Parties(NodeApp(cluster, a)), Parties(NodeApp(cluster, b))  # type: ignore[arg-type]
        alice_party, bob_party = await on_a("alice"), await on_b("bob")
        call_id = await answered(alice_party, bob_party)
        alice = CallPeer(alice_party, call_id, encoded_vp8(60, seed=1))
        bob = CallPeer(bob_party, call_id, encoded_vp8(60, seed=2))
        try:
            await alice.join()  # the first to negotiate: node A holds the call's media
            second = await bob.join()  # node B forwards bob's offer to node A
            assert "a=sendrecv" in second["sdp"]
            await wait_for(lambda: len(alice.frames) >= 10 and len(bob.frames) >= 10, 15)
            assert alice.offers_answered == 0  # alice's answer announced bob's track
            assert set(bob.frames) <= set(alice.track.sent)
            assert set(alice.frames) <= set(bob.track.sent)
            assert not set(alice.frames) & set(bob.frames)
            # both parties' media goes straight to node A; node B holds none
            assert await metric(http, a, "airwave_sfu_sessions") == 2
            assert await metric(http, b, "airwave_sfu_sessions") == 0

            # a forwarded request is still checked on the media node
            bad = await bob_party.call("call:sdp_answer", {"callId": call_id, "sdp": "v=0"})
            assert bad["error"]["code"] in ("no_offer_pending", "bad_sdp"), bad

            await bob_party.call("call:end", {"callId": call_id})
            await alice_party.wait("call:ended", call_id)
            await wait_for(lambda: True, 0)
            for _ in range(50):
                if await metric(http, a, "airwave_sfu_sessions") == 0:
                    break
                await alice_party.client.sleep(0.1)
            assert await metric(http, a, "airwave_sfu_sessions") == 0
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            await alice.close()
            await bob.close()
            await on_a.close()
            await on_b.close()


async def test_server_offer_reaches_a_party_whose_socket_moved_to_another_node() -> None:
    """Alice negotiates first through node A (the media node), then her socket
    moves to node B; bob's tracks from a new connection of his are offered to
    her by A through Socket.IO's Redis manager, and her answer goes back
    through B to A."""
    async with Cluster(2, ring_timeout=5, call_duration=30, reconnect_grace=10) as cluster:
        a, b = cluster.nodes
        on_a, on_b = Parties(NodeApp(cluster, a)), Parties(NodeApp(cluster, b))  # type: ignore[arg-type]
        alice_party, bob_party = await on_a("alice"), await on_b("bob")
        call_id = await answered(alice_party, bob_party)
        alice = CallPeer(alice_party, call_id, encoded_vp8(60, seed=1))
        bob = CallPeer(bob_party, call_id, encoded_vp8(60, seed=2))
        again = None
        try:
            await alice.join()
            await bob.join()  # announced in alice's answer: no offer to her
            await wait_for(lambda: len(alice.frames) >= 5, 15)
            moved = await on_b("alice")
            moved.client.on("call:sdp_offer", alice._server_offer)
            await moved.wait("call:resumed", call_id)
            await alice_party.close()
            alice.party = moved
            # bob offers from a new connection: his new track is offered to alice
            again = CallPeer(bob_party, call_id, encoded_vp8(60, seed=3))
            await again.join()
            await wait_for(lambda: alice.offers_answered == 1, 5)
            seen = len(alice.frames)
            await wait_for(lambda: len(alice.frames) >= seen + 10 and len(again.frames) >= 10, 15)
            assert set(alice.frames[seen:]) <= set(bob.track.sent) | set(again.track.sent)
            assert set(alice.frames[-3:]) <= set(again.track.sent)
            assert set(again.frames) <= set(alice.track.sent)
            assert [e for e, _ in alice_party.events].count("call:sdp_offer") == 0
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            await alice.close()
            await bob.close()
            if again is not None:
                await again.close()
            await on_a.close()
            await on_b.close()


async def test_internal_routes_take_node_tokens_only() -> None:
    async with Cluster(1) as cluster, aiohttp.ClientSession() as http:
        (a,) = cluster.nodes
        url = f"{a.url}/internal/v1/calls/c1/media"
        body = {"userId": "alice", "kind": "offer", "sdp": "v=0"}
        async with http.post(url, json=body) as r:
            assert r.status == 401
        for token in (cluster.token("alice"), cluster.token("ops", admin=True), cluster.token("node:x")):
            async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 403, await r.text()
        node = cluster.token("node:x", admin=True)
        async with http.post(url, json=body, headers={"Authorization": f"Bearer {node}"}) as r:
            assert r.status == 200
            assert (await r.json())["error"]["code"] == "call_not_found"
