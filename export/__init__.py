"""Training and ONNX export of the mhp-edge models. All torch code lives in this package."""
