"""The Plotly Dash app over an attnprof database: `create_app(db)` in app.py builds it; nothing is built on import.

Files: app.py (factory, serve), layout.py (component ids, the page), callbacks.py (wiring only), data.py (the
database side and its caches), views.py and compare.py (pure: frames -> what a view shows), figures.py and
cell_figures.py (pure: frames -> go.Figure) on plotting.py (plain-dict figure building blocks), hardware.py
(roofline ceilings).
"""
