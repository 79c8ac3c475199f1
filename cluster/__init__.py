"""cluster/: media across nodes.

Node identity and heartbeats (:mod:`cluster.nodes`), the media directory of
room origins and call media nodes with a local and a Redis implementation
(:mod:`cluster.directory`), edges that pull a room from its origin
(:mod:`cluster.edge`) and the routing of call media to its node
(:mod:`cluster.calls`), gathered for the faces in :class:`Cluster`. Knows no
HTTP face and no Socket.IO: what it needs from the socket face it declares
(:class:`cluster.calls.LocalCallMedia`). See docs/media-cluster.md.
"""

from cluster.calls import CallMediaRouter, LocalCallMedia, call_of_room, call_room, is_call_room
from cluster.directory import LocalMediaDirectory, MediaDirectory, RedisMediaDirectory
from cluster.edge import EdgePuller
from cluster.errors import ClusterError, OriginRefused, OriginUnreachable
from cluster.node import Cluster
from cluster.nodes import NodeAddress, NodeRegistry, is_node_subject, node_id_for

__all__ = [
    "CallMediaRouter",
    "Cluster",
    "ClusterError",
    "EdgePuller",
    "LocalCallMedia",
    "LocalMediaDirectory",
    "MediaDirectory",
    "NodeAddress",
    "NodeRegistry",
    "OriginRefused",
    "OriginUnreachable",
    "RedisMediaDirectory",
    "call_of_room",
    "call_room",
    "is_call_room",
    "is_node_subject",
    "node_id_for",
]
