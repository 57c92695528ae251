"""Tests of base training (one process and Ray Train DDP) and meta-training on Ray Train."""
