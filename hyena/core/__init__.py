"""Foundations every stage shares: typed params configs, atomic outputs and digests, device and
precision, distributed runs."""
