"""dvlad's HTTP API on a Unix socket (and optionally TCP): aiohttp on uvloop."""
