"""The bottom layer: errors, paths, configs, device choice, atomic writes and LMDB (kv). It imports
nothing else from the package."""
