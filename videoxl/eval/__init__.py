"""Evaluations: question families on held-out synthetic clips, and the needle-in-a-video benchmark."""
