"""The dispatcher: periodic repairs the system needs even when nobody calls it."""
