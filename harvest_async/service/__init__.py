"""The live service: the runner that drives the engine, the composition root, metrics,
systemd notification and logging."""
