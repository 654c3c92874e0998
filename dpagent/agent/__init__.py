"""The data-plane side: everything `dpagent run` does on a VM (asyncio, side effects)."""
