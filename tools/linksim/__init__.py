"""A userspace link simulator for TCP (and so WebSocket): delay per direction, jitter, a bandwidth
cap with a bottleneck queue, and stalls, for a kernel without netem (docs/frontends.md)."""
