"""An OpenVPN-compatible SSL VPN server as a sans-I/O protocol core.

Packets and `now` in; packets for the client, packets for the TUN, events and timers
out. No sockets, no clock, randomness injected. It imports neither `ikev2` nor `esp`;
the asyncio adapter lives in `daemon/ssl_vpn.py`.
"""
