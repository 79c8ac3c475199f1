"""calls/: 1:1 calls, their rules and timers (calls.py), next to the Redis
versions of their per-process state (redis_state.py)."""
