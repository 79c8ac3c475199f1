"""rooms/: the room registry (rooms.py), who knows whom (social.py), rate
limits (rate_limit.py) with the Redis versions of the rooms' per-process
state (redis_state.py), and the domain's one error vocabulary (errors.py)."""
