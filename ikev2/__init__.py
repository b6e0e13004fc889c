"""IKEv2 (RFC 7296) as a sans-I/O protocol core: bytes, addresses and `now` in;
datagrams, events and timers out. No sockets, no clock, no global state."""
