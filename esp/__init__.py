"""ESP (RFC 4303) packet engine: tunnel-mode encapsulation and decapsulation,
anti-replay, UDP encapsulation (RFC 3948) and lifetime accounting. No I/O."""
