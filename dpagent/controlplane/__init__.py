"""The bundled zone control plane: store, CA, tokens, dpserver, xDS and REST API."""
