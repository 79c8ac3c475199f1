"""The domain: rooms, participants, calls and their timers, chat, gifts, the event bus."""
