"""No two modules of the package import each other, directly or through others (function-local
imports included): the layers contract (lint-imports) checks the subpackages, this the modules."""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp", reason="needs grimp (import-linter's graph, pip install -e '.[dev]')")


def test_no_module_import_circle() -> None:
    g = grimp.build_graph("vsa_search", cache_dir=None)  # a cache of an older tree would hide a new circle
    circles = sorted({tuple(sorted((m, d))) for m in g.modules for d in g.find_modules_directly_imported_by(m)
                      if g.chain_exists(importer=d, imported=m)})
    assert circles == []
