"""gifts/: the gift catalog and sending (gifts.py), the double-entry ledger of
wallets (wallets.py), payouts, refunds and reconciliation (payouts.py)."""
