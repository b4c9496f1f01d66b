"""Offline build tools: ONNX export and TensorRT engine build."""
