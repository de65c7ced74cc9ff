"""Redis Cluster support (INTERFACE §7): topology, reads, writes, notifications."""
