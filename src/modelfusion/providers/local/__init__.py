"""Embedded llama.cpp: `catalog` (the shipped GGUFs, assembled and checked from PyPI data
packages), `loader` (llama-cpp-python, guarded: loading a model, its settings) and `runtime`
(the `local` provider kind: the model cache and the decode thread). Only `loader` imports
llama-cpp-python, and only when a `local:` model is used."""
