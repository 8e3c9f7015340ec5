"""Tests of runner.launch: pre-flight, backends, images, the run registry."""
