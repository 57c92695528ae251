"""Tests of the repository itself: docs, import graph, the mutation check's anchors."""
