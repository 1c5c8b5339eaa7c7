"""The annotated live view: frames from each camera's process (feed.py), drawn and
encoded in the supervisor only while someone watches (overlay.py, draw.py), served
over HTTP (pages.py and control/http.py)."""
