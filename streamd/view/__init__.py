"""The annotated live view: frames from the inference worker (feed.py), drawn and
encoded in the supervisor only while someone watches (overlay.py, draw.py), served
over HTTP (pages.py and control/http.py)."""
