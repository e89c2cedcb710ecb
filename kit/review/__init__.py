"""Review: look at the kit's matches, confirm or correct them, and submit with those decisions.

``kit review DATA --out DIR`` (and ``kit submit --review DIR``, ``kit validate --review DIR``) writes a static site:
one page per dataset, plain HTML and vanilla JavaScript with thumbnails, that opens from disk, offline. A 2025 page
shows each query with its best candidate identities, the local matches drawn as lines, the kit's decision and its
open-set score against tau, the most uncertain first; a 2026 page shows each cluster as a grid of photos. The keys
decide (accept, pick, new, skip, undo; confirm, split, merge); the browser keeps the progress and exports
``decisions.json``, which ``kit submit --decisions`` applies.

- ``identification.py``, ``clusters.py``: a dataset's page as plain data, from arrays and DataFrames;
- ``matches.py``: the local matches to draw (the plan's first matcher, its cached features);
- ``thumbs.py``: cached thumbnails; ``site.py``: the site on disk (static/ holds the page, its JS and CSS);
- ``build.py``: from a pipeline run to its site; ``decisions.py``: read, check and apply decisions.json;
- ``notebook.py``: the most uncertain queries inline in a notebook; ``browser.py``: a headless Chromium (tests).
"""

from .build import clustering_pages, identification_pages, submission_site, validation_site
from .clusters import clustering_page, nearest_clusters
from .decisions import Decisions, apply_identification, load_decisions
from .identification import identification_page, query_order
from .notebook import read_pages, show_uncertain, uncertain_html
from .site import write_site
from .thumbs import make_thumbnails

__all__ = ["Decisions", "apply_identification", "clustering_page", "clustering_pages", "identification_page",
           "identification_pages", "load_decisions", "make_thumbnails", "nearest_clusters", "query_order",
           "read_pages", "show_uncertain", "submission_site", "uncertain_html", "validation_site", "write_site"]
