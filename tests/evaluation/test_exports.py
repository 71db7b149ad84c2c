"""The package's public names all exist and are the modules' own."""

from __future__ import annotations

import feddetox.evaluation as evaluation


def test_every_exported_name_exists() -> None:
    missing = [name for name in evaluation.__all__ if not hasattr(evaluation, name)]
    assert not missing
    assert sorted(evaluation.__all__) == sorted(set(evaluation.__all__))
