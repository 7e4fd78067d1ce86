"""facecurate's tests (a regular package, so `tests.*` helpers win over any `tests` a dependency installs)."""
