"""The namespace lab: the networks that `lockgate demo`, the tests and the benchmarks
run in.

- `daemon.lab.netns`: `Lab` (namespaces, veth links, processes, all removed on exit and
  stopped by PID), the site-to-site topology with an optional NAT router, `ping`,
  `tcp_transfer` with a hash check, `in_namespace`.

It ships because `lockgate demo` runs in it; the strongSwan peer and the throwaway CA
that only tests and benchmarks use live in the unshipped `testkit` package.
Only documentation addresses are used (RFC 5737, RFC 3849). Nothing here imports the
rest of lockgate, nor pytest.
"""
