"""Hardware side: device targets, timing protocol, trtexec/tegrastats parsing, cost and latency models."""
