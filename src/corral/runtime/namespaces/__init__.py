"""Namespace (bubblewrap) runtime: user/pid/net/mount namespaces plus seccomp."""
