"""Data on disk: reading corpora, the packed token rows, and the activation store (reading,
writing, resuming)."""
