"""events/: the event bus (in process, or across nodes through Redis pub/sub)
and timers that hand an event back at a wall-clock time (in process, or in
Redis, claimed by exactly one live node)."""
