"""Deployment: ONNX export, INT8 quantization, the speed / memory / accuracy trade-off table,
memory profiling and MLflow model registration."""
