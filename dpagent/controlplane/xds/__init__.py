"""xDS for the bundled control plane: snapshots, the per-node cache and the ADS server."""
