"""Modules imported on first use: `from raytrain8m.runtime.lazy import tensorflow as tf`.

Model sizing (`models.size_mib`, the sweep's plan, the size params every run logs to MLflow)
reads only the variables' shapes, but lives beside the forward passes that need TensorFlow.
Importing TensorFlow takes ≈9 s on 2 cores, in every process that touches a model: a sweep's
driver, each Tune trial, `--status`. Through this module it is imported when a TensorFlow
name is first used (the standard library's `importlib.util.LazyLoader`); a process that only
plans, launches or logs never pays for it.

While TensorFlow loads, scikit-learn and pandas are hidden: Keras, which TensorFlow imports,
imports them only for adapters nothing here uses (its scikit-learn wrappers, pandas inputs to
`Model.fit`), and they are ≈3 s of TensorFlow's ≈12 s import on 2 cores. Both import normally
afterwards. Every module of the package takes TensorFlow from here, so every process loads it
this way.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types

# Imported by Keras only if present, for what this project never uses (see above).
HIDDEN_WHILE_LOADING = {"tensorflow": ("sklearn", "pandas")}


class _Hiding(importlib.abc.Loader):
    """Runs `loader` with the modules `hidden` unimportable (an ImportError, which Keras
    catches), unless something imported them already; then makes them importable again."""

    def __init__(self, loader: importlib.abc.Loader, hidden: tuple[str, ...]):
        self.loader, self.hidden = loader, hidden

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        hidden = [name for name in self.hidden if name not in sys.modules]
        sys.modules.update(dict.fromkeys(hidden))
        try:
            self.loader.exec_module(module)
        finally:
            for name in hidden:
                if sys.modules.get(name, ...) is None:
                    del sys.modules[name]


def lazy_module(name: str) -> types.ModuleType:
    """`name` as a module that is executed when one of its attributes is first read."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    if name in HIDDEN_WHILE_LOADING:
        spec.loader = _Hiding(spec.loader, HIDDEN_WHILE_LOADING[name])
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tensorflow = lazy_module("tensorflow")
