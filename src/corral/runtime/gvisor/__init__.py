"""The gVisor (runsc) runtime."""
