"""The pages for people: the catalog and the family-tree page, server-side HTML and SVG."""
