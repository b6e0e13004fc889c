"""Linux TUN devices and their links, addresses and routes (via pyroute2), plus an
in-memory TUN pair for tests that need no root."""
