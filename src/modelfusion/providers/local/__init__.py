"""Embedded llama.cpp: `catalog` (the shipped GGUFs, assembled and checked from PyPI data
packages) and `runtime` (the `local` provider kind). Only `runtime` imports llama-cpp-python,
and only when a `local:` model is used."""
