#!/usr/bin/python3
"""A file manager's part in a drag and drop test: a small GTK 3 window at the given place
whose button drags the given file's URI (text/uri-list over XDND), as Nautilus or Thunar
would. Usage: drag_source.py FILE X Y"""
import sys

import gi

gi.require_version("Gtk", "3.0")
from gi.repository import Gdk, GLib, Gtk  # noqa: E402

path, x, y = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
window = Gtk.Window(title="drag-source")
button = Gtk.Button(label="drag me")
button.drag_source_set(Gdk.ModifierType.BUTTON1_MASK, [], Gdk.DragAction.COPY)
button.drag_source_add_uri_targets()
button.connect(
    "drag-data-get",
    lambda _w, _ctx, data, _info, _time: data.set_uris([GLib.filename_to_uri(path, None)]),
)
window.add(button)
window.set_default_size(200, 100)
window.move(x, y)
window.connect("destroy", Gtk.main_quit)
window.show_all()
print("ready", flush=True)
Gtk.main()
