# The two commands of the README:
#   make demo   set everything up and run the site-to-site demo in network namespaces
#   make test   set everything up and run the whole test suite (unit, namespace, interop)
.PHONY: setup demo test test-fast lint bench bench-throughput bench-workers bench-p2c bench-p2c-load bench-ra-load fuzz

setup:
	@scripts/setup

demo: setup
	.venv/bin/lockgate demo

test: setup
	.venv/bin/python -m pytest

# Unit and property tests only: no root, no namespaces, no strongSwan (about a minute).
test-fast: setup
	.venv/bin/python -m pytest -m "not netns and not interop and not slow"

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench: setup
	.venv/bin/python -m bench.esp_gcm

# lockgate vs strongSwan in namespaces: iperf3, latency, CPU, and IKE setup rate.
bench-throughput: setup
	.venv/bin/python -m bench.throughput --control-plane

# Engine-only scaling of the data-plane workers: packets/s with 1 and 2 processes, in-process.
bench-workers: setup
	.venv/bin/python -m bench.workers

# lockgate's SSL server vs Debian's openvpn server: iperf3 through the stock client, TCP and UDP.
bench-p2c: setup
	.venv/bin/python -m bench.p2c_throughput

# 500 concurrent clients (20 stock openvpn, the rest generated) against one lockgate.
bench-p2c-load: setup
	.venv/bin/python -m bench.p2c_load

bench-ra-load: setup
	.venv/bin/python -m bench.ikev2_ra_load

# The dedicated fuzz run: 100,000 seeded cases across every IKEv2/ESP entry point.
fuzz: setup
	.venv/bin/python -m bench.fuzz --cases 100000 --seconds 900
