"""Operator tools: doctor, watch, simulate, demo, compute and the embedded Redis server."""
