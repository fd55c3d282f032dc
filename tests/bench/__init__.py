"""The benchmark harness (`make bench`): not collected by pytest (see pyproject's norecursedirs)."""
