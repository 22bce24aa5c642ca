"""Shared building blocks: attention, positions, norms, MLPs, scans, wavelets, token reduction."""
