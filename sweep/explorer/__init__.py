"""`memsweep serve`: a local, read-only web explorer of a landed output.

data.py reads the output (and nothing else does), params.py checks what a request asks, app.py turns both into
pages and their JSON/CSV/Parquet twins, server.py puts the app on a socket. The pages (templates/) and the
heatmap's script (static/) ship with the package: the explorer loads nothing from elsewhere.
"""
