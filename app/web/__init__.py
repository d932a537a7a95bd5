"""The HTTP side: the blueprints and the request plumbing. The only package (with app.local) that imports Flask."""
