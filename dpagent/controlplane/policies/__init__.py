"""Policy plugins: generic matching and merging, plus one folder per policy kind (see registry.py)."""
