"""Chaos run over the compose topology as processes (`make chaos`): see tests/chaos/runner.py."""
