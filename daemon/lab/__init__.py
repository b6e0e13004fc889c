"""The namespace lab: the networks that tests, the demo and the benchmarks run in.

- `daemon.lab.netns`: `Lab` (namespaces, veth links, processes, all removed on exit and
  stopped by PID), the site-to-site topology with an optional NAT router, `ping`,
  `tcp_transfer` with a hash check, `in_namespace`.
- `daemon.lab.strongswan`: charon in a namespace with userspace ESP, swanctl.conf
  generation and a small vici client.
- `daemon.lab.pki`: a throwaway CA issuing gateway certificates, in memory.

Only documentation addresses are used (RFC 5737, RFC 3849). Nothing here imports the
rest of lockgate, nor pytest.
"""
