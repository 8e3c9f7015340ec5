"""Test doubles that speak the real wire protocols (loopback servers), for tests and benches."""
