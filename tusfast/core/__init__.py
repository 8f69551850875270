"""The sans-IO tus core: header parsing, protocol rules and replies. No I/O happens in this package."""
