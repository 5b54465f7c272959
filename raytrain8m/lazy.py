"""Modules imported on first use: `from raytrain8m.lazy import tensorflow as tf`.

Model sizing (`models.size_mib`, the sweep's plan, the size params every run logs to MLflow)
reads only the variables' shapes, but lives beside the forward passes that need TensorFlow.
Importing TensorFlow takes ≈9 s on 2 cores, in every process that touches a model: a sweep's
driver, each Tune trial, `--status`. Through this module it is imported when a TensorFlow
name is first used (the standard library's `importlib.util.LazyLoader`); a process that only
plans, launches or logs never pays for it.
"""
from __future__ import annotations

import importlib.util
import sys
import types


def lazy_module(name: str) -> types.ModuleType:
    """`name` as a module that is executed when one of its attributes is first read."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tensorflow = lazy_module("tensorflow")
