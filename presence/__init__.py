"""presence/: who is online (presence.py), with the Redis socket counter that
shares it across nodes (redis_sockets.py)."""
