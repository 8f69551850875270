"""The HTTP/1.1 server layer: h11 parses heads and writes responses; bodies bypass h11. Knows no tus."""
