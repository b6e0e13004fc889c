"""ESP (RFC 4303) packet engine: tunnel-mode encapsulation and decapsulation,
anti-replay, UDP encapsulation (RFC 3948) and lifetime accounting. No I/O.

Modules:

- `esp.suites`: `EspSuite` (key, IV, ICV and padding sizes), `suite_by_name` for
  strongSwan keywords, `suite_from_transforms` for negotiated IKEv2 ids, and the
  MTU arithmetic (`EspSuite.overhead`, `EspSuite.inner_mtu_for`).
- `esp.sa`: `EspSA`, one unidirectional SA. `encapsulate[_batch]` gives ESP
  octets from the SPI to the ICV; `decapsulate[_batch]` gives (inner packet,
  next header) or a `DropReason`. `NH_PARTIAL_CSUM` marks TCP segments whose
  checksum the receiver completes, on an SA whose two lockgates agreed on it.
  Counters, `Lifetime` limits and `lifetime_state()` for the IKE side to poll.
- `esp.replay`: `ReplayWindow`, the anti-replay bitmap with ESN inference, and
  `NoReplayCheck` for a receiver that leaves anti-replay off.
- `esp.udpencap`: the port-4500 demultiplexer (IKE / ESP / keepalive) and
  ESP-in-UDP framing.
- `esp.drops`: `DropReason`, every way a packet can be refused.
- `esp.errors`: `EspConfigError`, `UnknownSuite` for local misuse.

Network input never raises; configuration mistakes do.
"""
