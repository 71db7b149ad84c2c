"""The operator's dashboard: static pages served at `/` over the same REST API that scripts use.

- `routes`: the router (the page at `/`, its files at `/static/...`, and the evaluation endpoint)
- `evaluation`: per-round evaluation metrics (ASR, XSTest, utility) recorded for a run's global adapters
- `static/`: the page (HTML, CSS, and our own JavaScript that draws its charts as SVG); no third-party code
"""

from server.dashboard.routes import router

__all__ = ["router"]
