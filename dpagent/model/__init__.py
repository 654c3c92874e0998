"""Kuma-shaped resources shared by the agent (local validation) and the control plane (store, API, xDS).

Kept free of server imports so the agent process can use it without pulling in aiohttp or grpc.
"""
