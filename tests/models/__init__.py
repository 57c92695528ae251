"""Tests of the networks, their weights files and releases, meta-training steps."""
