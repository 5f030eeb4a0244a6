"""``confero app``: start the desktop app."""

from __future__ import annotations

import os
import sys

from PySide6.QtWidgets import QApplication

from confero.app.window import MainWindow


def run(server: str | None, name: str | None, connect: bool) -> int:
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
            or os.environ.get("QT_QPA_PLATFORM")):
        print("error: no display to open a window on (DISPLAY and WAYLAND_DISPLAY are not "
              "set); on a headless machine use `confero bot`, or xvfb-run", file=sys.stderr)
        return 2
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("confero")
    window = MainWindow()
    if server:
        window.start.server.setText(server)
    if name:
        window.start.name.setText(name)
    window.show()
    if connect and window.start.name.text().strip():
        window.connect_to_server()
    return int(app.exec())
