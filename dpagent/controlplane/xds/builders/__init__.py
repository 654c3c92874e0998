"""Small factories for xds-protos messages; no policy or mesh knowledge, only Envoy shapes."""
