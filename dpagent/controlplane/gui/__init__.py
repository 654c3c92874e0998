"""The web GUI the control plane serves at `/gui`: read-only pages over the same state `inspect` reads.

`views.py` builds every page's data from plain inputs (pure, unit-tested); `server.py` gathers those inputs from
the store, the delivery cache and sync's mesh state and serves them as JSON next to the static front end in
`static/` (one HTML shell, one script, one stylesheet: no CDN, no build step, nothing fetched from elsewhere).
"""
