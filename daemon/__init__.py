"""The gateway daemon: wires configuration, the IKEv2 core, the ESP engine and the
TUN device together, and serves the control socket and CLI."""
