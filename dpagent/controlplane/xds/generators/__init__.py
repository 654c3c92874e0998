"""Pure generators: (mesh context, dataplane) → Envoy resources. No I/O, env, clock or randomness."""
