"""Shipped ONNX models with their cards, installed as ``mhp_edge.models``."""
