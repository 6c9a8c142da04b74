"""The model: the v2 network built from plans, the architectures trained here, and the v1 -> v2 converter."""
