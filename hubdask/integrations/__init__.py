"""Faces for the data scientist's tools: PyTorch, TensorFlow, xarray, and ingest from/export to files.

Each module imports its framework only when used, so hubdask runs without any of them installed.
"""
