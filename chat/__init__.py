"""chat/: room chat and direct messages (chat.py) and each user's list of
chats (inbox.py)."""
