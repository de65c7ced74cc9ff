"""Recordings: the file format, the recorder, the offline replayer, comparison, plots."""
