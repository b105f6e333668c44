//! Host-key policy: the one place that decides whether a server's key is trusted.
