"""`animegen serve`: a local web studio over the latent library (studio.py) served by a small
Starlette app (app.py) with one page of plain HTML, CSS and JavaScript (static/)."""
