"""The desktop app (PySide6): widgets only; the engine does the work."""
