"""dpagent: a service-mesh data plane agent for VMs and bare metal, with a bundled zone control plane."""

__version__ = "0.1.0"
GIT_TAG = f"v{__version__}"
