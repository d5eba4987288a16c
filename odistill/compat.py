"""Old module paths of odistill 0.1 (``odistill.divergences``, ``odistill.models`` …) keep working.

The modules moved into the parts of the package (``odistill.core``, ``odistill.train``,
``odistill.bench``, ``odistill.classroom``). Importing an old path gives the module at its new home (the
same object, so monkeypatching either name patches both) and a ``DeprecationWarning`` naming it. Names
that moved to another module (:data:`MOVED_NAMES`, e.g. ``token_log_probs`` from ``divergences`` to
``tensor_ops``) are reachable from the old path again. Two signatures changed: ``chunked_divergence`` takes
a kernel instead of a name (the divergences call it for you), and the registry calls generalized JSD
``"jsd"`` (``"generalized_jsd"`` is accepted as an alias).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "install_moved_modules"]

#: Old module path → new module path.
MOVED_MODULES = {
    "odistill.divergences": "odistill.core.divergences",
    "odistill.chunked": "odistill.core.chunked",
    "odistill.rollouts": "odistill.core.rollouts",
    "odistill.sampler": "odistill.core.sampler",
    "odistill.teacher": "odistill.core.teacher",
    "odistill.loss": "odistill.core.loss",
    "odistill.config": "odistill.train.config",
    "odistill.trainer": "odistill.train.trainer",
    "odistill.tasks": "odistill.bench.tasks",
    "odistill.tokenizer": "odistill.bench.tokenizer",
    "odistill.models": "odistill.bench.models",
    "odistill.sft": "odistill.bench.sft",
    "odistill.evaluation": "odistill.bench.evaluation",
    "odistill.experiments": "odistill.bench.experiments",
    "odistill.viz": "odistill.classroom.viz",
    "odistill.exercises": "odistill.classroom.exercises",
}


#: Names that moved to another module with the reorganisation: old module path → {name: new module}.
#: Importing the old path makes them reachable from it again.
MOVED_NAMES = {
    "odistill.divergences": dict.fromkeys(("token_log_probs", "logsumexp_rows"), "odistill.core.tensor_ops"),
    "odistill.chunked": dict.fromkeys(
        ("fused_linear_divergence", "FUSED_CHUNK_ELEMENTS"), "odistill.core.fused"
    ),
    "odistill.rollouts": dict.fromkeys(
        ("completion_logits", "completion_hidden", "lm_head_of", "position_ids_from_mask"),
        "odistill.core.forward",
    ),
    "odistill.teacher": {"output_vocab_size": "odistill.core.forward"},
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new home."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED_MODULES[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there (the old path will be removed)",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        for name, home in MOVED_NAMES.get(spec.name, {}).items():
            if not hasattr(module, name):
                setattr(module, name, getattr(importlib.import_module(home), name))
        self._real_spec = module.__spec__  # the import system overwrites __spec__ after create_module
        return module

    def exec_module(self, module):
        module.__spec__ = self._real_spec  # the module keeps its real name, spec and loader


def install_moved_modules() -> None:
    """Put the finder of :data:`MOVED_MODULES` on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
