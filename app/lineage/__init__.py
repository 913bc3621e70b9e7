"""The lineage graph: parent → child edges and the family-tree queries over them."""
