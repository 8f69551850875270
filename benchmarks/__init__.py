"""End-to-end benchmarks of tusfast against tusd and @tus/server: `python -m benchmarks`.

servers.py starts, stops and measures the servers; loadgen.py is the raw-socket tus client;
scenarios.py holds the six scenarios; report.py turns samples into Markdown, JSON and a PNG.
"""
