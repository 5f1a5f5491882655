"""Knowing your library: duplicates (duplicates.py), zero-shot labels and tags (classify.py), a map of
the embedding space (map.py), and listing and forgetting what is indexed (manage.py).

Built on the read path (reader.Reader) and the Catalog's methods, never on raw tables; nothing here
prints. The CLI commands are in clipsearch/cli_tools.py.
"""
