"""Tests of the codec and its encoder: byte format, adaptation, refinement, rate control, image input, metrics, anchors."""
